"""DVC stage ingest: build the manifest and box list from the data root
(the phantom stage's output, or the user's NIH / Kaggle download)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    from pipeline.atomic import write_json_atomic
    from pipeline.config import load_params, path_of
    from pipeline.ingest import run_ingest

    params = load_params()
    report = run_ingest(params)
    write_json_atomic(path_of(params, "metrics") / "ingest.json", report)
    print(
        f"ingest: {report['manifest_rows']} images of {report['patients']} patients "
        f"{report['split_images']} ({report['split_method']} split); {report['rows_without_image']} "
        f"CSV rows without an image, {report['images_without_row']} images without a row",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage("ingest", main)
