"""What the validate stage prints: the failure summary (one screen), the
warnings, the rejected CSV rows, and the stage's last line."""
from __future__ import annotations

from pipeline.data.row_problems import format_rejected_rows
from pipeline.data.validate import NOT_EVALUATED, PATIENT_SPLITS_COLUMN, ValidationResult

MAX_SUMMARY_LINES = 40
SHOWN_WARNINGS = 50


def stage_lines(result: ValidationResult, source: str, rejected_out: str, report_json: str) -> list[str]:
    """Every line the stage prints before its verdict: the first SHOWN_WARNINGS
    warnings, the rejected rows (first 50, all in rejected_out), the failed checks."""
    lines = [f"validate: warning: {warning}" for warning in result.warnings[:SHOWN_WARNINGS]]
    if len(result.warnings) > SHOWN_WARNINGS:
        lines.append(f"validate: ... and {len(result.warnings) - SHOWN_WARNINGS} more warnings, all in {report_json}")
    if result.rejected_rows:
        verdict = "fail the run" if result.rejected_rows_fail else "left out, the run goes on"
        lines.append(f"validate: {len(result.rejected_rows)} rejected CSV row(s) ({verdict}: validate.on_invalid is "
                     f"{result.on_invalid}):")
        lines.extend(f"  {line}" for line in format_rejected_rows(result.rejected_rows, rejected_out))
    if any(c["severity"] == "error" and not c["success"] for c in result.checks):
        lines.append(format_failure_summary(result, source))
    return lines


def _row_phrase(count: int) -> str:
    return f"{count} row" + ("" if count == 1 else "s")


def format_failure_summary(result: ValidationResult, source: str) -> str:
    """One screen (at most 40 lines) saying what failed in `source`: each failed
    check, how many rows, and a few example values with their row numbers."""
    status = "passed" if result.success else "FAILED"
    errors = [c for c in result.checks if c["severity"] == "error" and not c["success"]]
    unevaluated = [c for c in errors if c.get("error", "").startswith(NOT_EVALUATED)
                   and c["error"].endswith("is missing")]
    evaluated = [c for c in errors if c not in unevaluated]
    lines = [
        f"Manifest validation {status}: {source}",
        f"{result.rows} rows, {len(result.checks)} checks, {len(errors)} failed, "
        f"{len(result.warnings)} warnings" + _rejected_phrase(result),
    ]
    if unevaluated:
        columns = list(dict.fromkeys(str(c["column"]) for c in unevaluated))
        lines.append(f"{len(unevaluated)} failed check(s) {NOT_EVALUATED}: column(s) missing: "
                     f"{_short_list(columns)}")
    budget = MAX_SUMMARY_LINES - len(lines) - 1  # room for a final "... not shown" line
    shown = 0
    for check in evaluated:
        block = _check_lines(check)
        if len(block) > budget:
            break
        lines.extend(block)
        budget -= len(block)
        shown += 1
    shown_warnings = 0
    if result.warnings and budget >= 2:
        lines.append("Warnings:")
        shown_warnings = min(len(result.warnings), budget - 1)
        lines.extend(f"  {w}" for w in result.warnings[:shown_warnings])
    hidden = [f"{n} more failed checks" for n in [len(evaluated) - shown] if n]
    hidden += [f"{n} more warnings" for n in [len(result.warnings) - shown_warnings] if n]
    if hidden:
        lines.append(f"... {' and '.join(hidden)} not shown (see the JSON report)")
    return "\n".join(lines[:MAX_SUMMARY_LINES])


def _rejected_phrase(result: ValidationResult) -> str:
    if not result.rejected_rows:
        return ""
    action = "fail the run" if result.on_invalid == "fail" else "left out"
    return f", {len(result.rejected_rows)} rejected CSV rows ({action}: validate.on_invalid is {result.on_invalid})"


def _example_line(example: dict) -> str:
    """`row 12 (00000004_002.png): 414`."""
    image = f" ({example['image_id']})" if example.get("image_id") is not None else ""
    return f"    row {example['row']}{image}: {_clip(repr(example['value']))}"


def _short_list(items: list, limit: int = 8) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_lines(check: dict) -> list[str]:
    where = f" [{check['column']}]" if check.get("column") else ""
    lines = [f"- {check['expectation']}{where}: {check['description']}"]
    if "error" in check:
        lines.append(f"    {check['error']}")
    if check["expectation"] == "expect_table_columns_to_match_ordered_list":
        if check.get("missing"):
            lines.append(f"    missing column(s): {_short_list(check['missing'])}")
        if check.get("unexpected"):
            lines.append(f"    unexpected column(s): {_short_list(check['unexpected'])}")
        if not check.get("missing") and not check.get("unexpected"):
            lines.append("    the columns are all there but out of order")
        return lines
    if check.get("column") == PATIENT_SPLITS_COLUMN:
        lines.append(f"    {_row_phrase(check['unexpected_count'])} belong to patients "
                     f"in more than one split; e.g.")
        lines.extend(f"    row {ex['row']} ({ex.get('image_id')}): patient_id {ex['patient_id']} in "
                     f"{', '.join(ex['splits'])}" for ex in check["examples"][:3])
        return lines
    if "observed" in check and "error" not in check:
        lines.append(f"    observed: {_clip(repr(check['observed']))}")
    if check["unexpected_count"]:
        lines.append(f"    {_row_phrase(check['unexpected_count'])} failed; e.g.")
        lines.extend(_example_line(ex) for ex in check["examples"][:3])
    return lines


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def failure_line(source, rejected: int, errors: int, page, rejected_out) -> str:
    """The stage's last line: what failed, and where the whole story is."""
    problems = []
    if rejected:
        problems.append(f"{rejected} rejected CSV row(s) (validate.on_invalid is fail; drop goes on without them)")
    if errors:
        problems.append(f"{errors} failed check(s)")
    where = f"{page} and {rejected_out}" if rejected else str(page)
    return f"{source} failed validation: {' and '.join(problems)}; see above, {where}"
