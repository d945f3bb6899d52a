"""DVC stage ingest: build the manifest and box list from the data root
(the phantom stage's output, the user's NIH / Kaggle download, or a folder of
their own films with a labels CSV). CSV rows it cannot use go to
paths.rejected_rows; the validate stage decides what they do to the run."""
import dataclasses
import sys
from pathlib import Path

from pipeline.core.settings import Settings
from pipeline.core.stage import run_stage


def main(settings: Settings) -> None:
    from pipeline.data.sources import check_source_settings

    check_source_settings(settings.ingest.source, settings.ingest.root, settings.path("phantom"))
    from pipeline.core.atomic import write_csv_atomic
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.data_change import change_lines, change_metrics, data_change, previous_manifest
    from pipeline.data.ingest import ingest_notes
    from pipeline.data.readers import ingest_data_root
    from pipeline.data.row_problems import write_rejected_rows

    ingest = settings.ingest
    manifest, boxes, rejected, report = ingest_data_root(
        ingest.source, Path(ingest.root), dataclasses.asdict(ingest.split), settings.seed,
        require_all_images=ingest.require_all_images, labels=ingest.labels, strata=settings.evaluate.strata,
    )
    rejected_file, report_file = settings.path("rejected_rows"), settings.path("ingest_report")
    write_csv_atomic(manifest, settings.path("manifest"))
    write_csv_atomic(boxes, settings.path("boxes"))
    write_rejected_rows(rejected, rejected_file)
    # Against the manifest the last ingest wrote (dvc.lock still names it while this stage runs).
    earlier, source = previous_manifest(Path("dvc.lock"), settings.params["paths"]["manifest"])
    report["data_change"] = data_change(earlier, manifest, source)
    # Every key here is a column of `dvc metrics show`: patients and unused files are in the report
    # only, rejected rows and missing ages in validate's summary (the stage that decides on them).
    summary = {"images": report["manifest_rows"], **change_metrics(report["data_change"])}
    write_stage_figures(summary, report, settings.path("metrics") / "ingest.json", report_file)
    without_image = report.get("rows_without_image")
    print(
        f"ingest: {report['manifest_rows']} images of {report['patients']} patients "
        f"{report['split_images']} ({report['split_method']} split)"
        + ("" if without_image is None else f"; {without_image} CSV rows without an image"),
        file=sys.stderr,
    )
    for line in [*change_lines(report["data_change"]), *ingest_notes(report, len(rejected), rejected_file,
                                                                      report_file)]:
        print(f"ingest: {line}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("ingest", main)
