"""DVC stage validate: the Great Expectations gate on the manifest, and the decision on
the CSV rows ingest rejected (validate.on_invalid: fail | drop). Only a manifest that
passes is copied to paths.validated_manifest, the one later stages read; the HTML report
and reports/rejected_rows.csv are written either way, naming every problem in one run."""
import json
import shutil
import sys

from pipeline.core.settings import Settings
from pipeline.core.stage import StageError, run_stage


def main(settings: Settings) -> None:
    from pipeline.data.sources import check_source_settings

    check_source_settings(settings.ingest.source, settings.ingest.root, settings.path("phantom"))
    from pipeline.core.atomic import atomic_dir
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.manifest import read_manifest
    from pipeline.data.row_problems import read_rejected_rows, write_rejected_rows
    from pipeline.data.validate import validate_manifest
    from pipeline.data.validation_report import write_validation_report
    from pipeline.data.validation_summary import failure_line, stage_lines

    source = settings.path("manifest")
    rejected_out = settings.path("reports") / "rejected_rows.csv"
    result = validate_manifest(
        read_manifest(source), source=settings.ingest.source,
        rejected_rows=read_rejected_rows(ingest_output(settings, "rejected_rows")),
        ages_missing=json.loads(ingest_output(settings, "ingest_report").read_text()).get("ages_missing", []),
        on_invalid=settings.validate.on_invalid, min_split_patients=settings.validate.min_split_patients,
    )
    page = write_validation_report(result, str(source), settings.path("validation_report"), settings.ingest.source)
    write_rejected_rows(result.rejected_rows, rejected_out)
    detail = result.to_json_dict()
    errors = sum(1 for check in result.failed if check["severity"] == "error")
    write_stage_figures({"failed": errors, "warnings": len(result.warnings), "ages_missing": len(result.ages_missing),
                         "rejected_rows": len(result.rejected_rows)},
                        detail, settings.path("metrics") / "validate.json", page.parent / "validate.json")
    for line in stage_lines(result, str(source), str(rejected_out), str(page.parent / "validate.json")):
        print(line, file=sys.stderr)
    if not result.success:
        raise StageError(failure_line(source, len(result.rejected_rows) if result.rejected_rows_fail else 0, errors,
                                      page, rejected_out))
    validated = settings.path("validated_manifest")
    with atomic_dir(settings.path("validated_dir")) as staging:
        shutil.copyfile(source, staging / validated.name)
    print(f"validate: {source} passed {len(result.checks)} checks", file=sys.stderr)


def ingest_output(settings: Settings, key: str):
    path = settings.path(key)
    if not path.is_file():
        raise StageError(f"{path}: not found (paths.{key}); the ingest stage writes it: dvc repro ingest")
    return path


if __name__ == "__main__":
    run_stage("validate", main)
