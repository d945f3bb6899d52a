"""DVC stage ingest: build the manifest and box list from the data root
(the phantom stage's output, or the user's NIH / Kaggle download)."""
import sys
from pathlib import Path

from pipeline.core.stage import run_stage


def main() -> None:
    from pipeline.core.atomic import write_csv_atomic
    from pipeline.core.config import load_params, path_of, phantom_root, section
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.ingest import ingest_data_root

    params = load_params()
    settings = section(params, "ingest")
    root = phantom_root(params) if settings["source"] == "phantom" else Path(settings["root"])
    manifest, boxes, report = ingest_data_root(
        settings["source"], root, settings["split"], int(params["seed"]),
        require_all_images=bool(settings.get("require_all_images", False)),
    )
    write_csv_atomic(manifest, path_of(params, "manifest"))
    write_csv_atomic(boxes, path_of(params, "boxes"))
    write_stage_figures({"images": report["manifest_rows"], "patients": report["patients"]}, report,
                        path_of(params, "metrics") / "ingest.json", path_of(params, "ingest_report"))
    print(
        f"ingest: {report['manifest_rows']} images of {report['patients']} patients "
        f"{report['split_images']} ({report['split_method']} split); {report['rows_without_image']} "
        f"CSV rows without an image, {report['images_without_row']} images without a row",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage("ingest", main)
