"""DVC stage validate: the Great Expectations gate on the manifest.

Only a manifest that passes is copied to paths.validated_manifest, the one
later stages read, so a failure stops the pipeline here. The HTML report
(paths.validation_report) is written either way.
"""
import shutil
import sys

from pipeline.core.stage import StageError, run_stage


def main() -> None:
    from pipeline.core.atomic import atomic_dir
    from pipeline.core.config import load_params, path_of
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.manifest import read_manifest
    from pipeline.data.validate import format_failure_summary, validate_manifest
    from pipeline.data.validation_report import write_validation_report

    params = load_params()
    source = path_of(params, "manifest")
    result = validate_manifest(read_manifest(source))
    page = write_validation_report(result, str(source), path_of(params, "validation_report"))
    detail = result.to_json_dict()
    errors = sum(1 for check in result.failed if check["severity"] == "error")
    write_stage_figures({"failed": errors, "warnings": len(detail["warnings"])}, detail,
                        path_of(params, "metrics") / "validate.json", page.parent / "validate.json")
    for warning in result.warnings:
        print(f"validate: warning: {warning}", file=sys.stderr)
    if not result.success:
        print(format_failure_summary(result, str(source)), file=sys.stderr)
        raise StageError(f"{source} failed validation; see above and {page}")
    validated = path_of(params, "validated_manifest")
    with atomic_dir(path_of(params, "validated_dir")) as staging:
        shutil.copyfile(source, staging / validated.name)
    print(f"validate: {source} passed {len(result.checks)} checks", file=sys.stderr)


if __name__ == "__main__":
    run_stage("validate", main)
