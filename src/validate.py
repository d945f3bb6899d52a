"""DVC stage validate: the Great Expectations gate on the manifest, and the decision on
the CSV rows ingest rejected (validate.on_invalid: fail | drop). Only a manifest that
passes is copied to paths.validated_manifest, the one later stages read; the HTML report
and reports/rejected_rows.csv are written either way, naming every problem in one run."""
import json
import shutil
import sys

from pipeline.core.stage import StageError, run_stage


def main() -> None:
    from pipeline.core.atomic import atomic_dir
    from pipeline.core.config import load_params, path_of, section
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.manifest import read_manifest
    from pipeline.data.row_problems import read_rejected_rows, write_rejected_rows
    from pipeline.data.validate import validate_manifest
    from pipeline.data.validation_report import write_validation_report
    from pipeline.data.validation_summary import failure_line, stage_lines

    params = load_params()
    source = path_of(params, "manifest")
    rejected_out = path_of(params, "reports") / "rejected_rows.csv"
    settings = section(params, "validate")
    result = validate_manifest(
        read_manifest(source), source=section(params, "ingest")["source"],
        rejected_rows=read_rejected_rows(ingest_output(params, "rejected_rows")),
        ages_missing=json.loads(ingest_output(params, "ingest_report").read_text()).get("ages_missing", []),
        on_invalid=settings["on_invalid"], min_split_patients=settings["min_split_patients"],
    )
    page = write_validation_report(result, str(source), path_of(params, "validation_report"))
    write_rejected_rows(result.rejected_rows, rejected_out)
    detail = result.to_json_dict()
    errors = sum(1 for check in result.failed if check["severity"] == "error")
    write_stage_figures({"failed": errors, "warnings": len(result.warnings), "ages_missing": len(result.ages_missing),
                         "rejected_rows": len(result.rejected_rows)},
                        detail, path_of(params, "metrics") / "validate.json", page.parent / "validate.json")
    for line in stage_lines(result, str(source), str(rejected_out), str(page.parent / "validate.json")):
        print(line, file=sys.stderr)
    if not result.success:
        raise StageError(failure_line(source, len(result.rejected_rows) if result.rejected_rows_fail else 0, errors,
                                      page, rejected_out))
    validated = path_of(params, "validated_manifest")
    with atomic_dir(path_of(params, "validated_dir")) as staging:
        shutil.copyfile(source, staging / validated.name)
    print(f"validate: {source} passed {len(result.checks)} checks", file=sys.stderr)


def ingest_output(params: dict, key: str):
    from pipeline.core.config import path_of

    path = path_of(params, key)
    if not path.is_file():
        raise StageError(f"{path}: not found (paths.{key}); the ingest stage writes it: dvc repro ingest")
    return path


if __name__ == "__main__":
    run_stage("validate", main)
