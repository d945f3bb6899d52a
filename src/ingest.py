"""DVC stage ingest: build the manifest and box list from the data root
(the phantom stage's output, the user's NIH / Kaggle download, or a folder of
their own films with a labels CSV). CSV rows it cannot use go to
paths.rejected_rows; the validate stage decides what they do to the run."""
import sys
from pathlib import Path

from pipeline.core.stage import run_stage


def main() -> None:
    from pipeline.core.atomic import write_csv_atomic
    from pipeline.core.config import load_params, path_of, phantom_root, section
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.ingest import ingest_data_root, ingest_notes
    from pipeline.data.row_problems import write_rejected_rows

    params = load_params()
    settings = section(params, "ingest")
    root = phantom_root(params) if settings["source"] == "phantom" else Path(settings["root"])
    manifest, boxes, rejected, report = ingest_data_root(
        settings["source"], root, settings["split"], int(params["seed"]),
        require_all_images=bool(settings.get("require_all_images", False)), labels=settings.get("labels"),
    )
    rejected_file, report_file = path_of(params, "rejected_rows"), path_of(params, "ingest_report")
    write_csv_atomic(manifest, path_of(params, "manifest"))
    write_csv_atomic(boxes, path_of(params, "boxes"))
    write_rejected_rows(rejected, rejected_file)
    # Every key here is a column of `dvc metrics show`: patients and unused files are in the report
    # only, rejected rows and missing ages in validate's summary (the stage that decides on them).
    summary = {"images": report["manifest_rows"]}
    write_stage_figures(summary, report, path_of(params, "metrics") / "ingest.json", report_file)
    without_image = report.get("rows_without_image")
    print(
        f"ingest: {report['manifest_rows']} images of {report['patients']} patients "
        f"{report['split_images']} ({report['split_method']} split)"
        + ("" if without_image is None else f"; {without_image} CSV rows without an image"),
        file=sys.stderr,
    )
    for line in ingest_notes(report, len(rejected), rejected_file, report_file):
        print(f"ingest: {line}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("ingest", main)
