"""DVC stage ingest: (generate the phantom, then) build the manifest and box list."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    from pipeline.atomic import atomic_dir, write_json_atomic
    from pipeline.config import load_params, path_of
    from pipeline.ingest import ingest_into

    params = load_params()
    with atomic_dir(path_of(params, "ingest_dir")) as staging:
        report = ingest_into(staging, params)
    write_json_atomic(path_of(params, "metrics") / "ingest.json", report)
    print(
        f"ingest: {report['manifest_rows']} images of {report['patients']} patients "
        f"{report['split_images']}; {report['rows_without_image']} CSV rows without an image, "
        f"{report['images_without_row']} images without a row",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage("ingest", main)
