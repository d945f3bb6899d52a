"""The validate stage's HTML report: every check of the manifest suite, pass or fail.

Why not Great Expectations' own Data Docs: in GX 1.24.1 they load Bootstrap,
Font Awesome, Vega and more from public CDNs (cdnjs, jsdelivr,
bootstrapcdn), so offline (this project runs without network) they render
unstyled, and they need a file-backed context plus stored validation results.
This page is one self-contained file built from our ValidationResult: no
network, no JavaScript, no timestamps (the same result gives the same bytes).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.html import escape, html_page
from pipeline.data.synthetic_banner import synthetic_banner
from pipeline.data.validate import ValidationResult

REPORT_FILE = "index.html"
MAX_LISTED = 200  # rejected rows and missing ages shown on the page; validate.json has them all
STYLE = """
h2 { font-size: 1.1em; margin-top: 1.6em; }
.status { display: inline-block; padding: .2em .6em; border-radius: .3em; color: #fff; font-weight: bold; }
.pass { background: #2e7d32; } .fail { background: #c62828; } .warn { background: #ef6c00; }
table { width: 100%; }
th, td { text-align: left; vertical-align: top; }
tr.failed-error td { background: #fdecea; } tr.failed-warning td { background: #fff4e5; }
code { font-size: .95em; }
"""


def _outcome(check: dict) -> tuple[str, str]:
    """(css class, word) for a check's row."""
    if check["success"]:
        return "", "passed"
    if check["severity"] == "warning":
        return "failed-warning", "warning"
    return "failed-error", "FAILED"


def _examples(check: dict) -> str:
    parts = []
    if check.get("error"):
        parts.append(escape(check["error"]))
    if check.get("missing"):
        parts.append("missing column(s): " + escape(", ".join(check["missing"])))
    if check.get("unexpected"):
        parts.append("unexpected column(s): " + escape(", ".join(map(str, check["unexpected"]))))
    for example in check.get("examples", []):
        where = f"row {escape(example['row'])}"
        if example.get("image_id") is not None:
            where += f" ({escape(example['image_id'])})"
        if "splits" in example:
            parts.append(f"{where}: patient_id {escape(example['patient_id'])} in "
                         f"{escape(', '.join(example['splits']))}")
        else:
            parts.append(f"{where}: <code>{escape(repr(example['value']))}</code>")
    return "<br>".join(parts)


def _rows_table(rows: list[dict], columns: tuple[str, ...], what: str) -> str:
    """A plain table of row-problem dicts, cut at MAX_LISTED with a note."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{escape(row[c])}</td>" for c in columns) + "</tr>"
                     for row in rows[:MAX_LISTED])
    more = ""
    if len(rows) > MAX_LISTED:
        more = f"<p>... and {len(rows) - MAX_LISTED} more {what}, all in validate.json.</p>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _row_problem_sections(result: ValidationResult) -> list[str]:
    parts = []
    if result.rejected_rows:
        effect = ("they fail the run" if result.on_invalid == "fail"
                  else "they are left out of the manifest and the run goes on")
        parts += [f"<h2>Rejected CSV rows ({len(result.rejected_rows)})</h2>",
                  f"<p>Rows of the source's CSV that ingest could not use; validate.on_invalid is "
                  f"<code>{escape(result.on_invalid)}</code>: {effect}.</p>",
                  _rows_table(result.rejected_rows, ("file", "line", "image_id", "reason"), "rows")]
    if result.ages_missing:
        parts += [f"<h2>Ages kept as missing ({len(result.ages_missing)})</h2>",
                  "<p>The image and its labels are kept; its age is empty in the manifest.</p>",
                  _rows_table(result.ages_missing, ("image_id", "value", "reason", "file", "line"), "ages")]
    return parts


def _check_row(check: dict) -> str:
    css, word = _outcome(check)
    cells = [
        word,
        f"<code>{escape(check['expectation'])}</code>",
        escape(check["column"] or ""),
        escape(check["description"]),
        escape(check["severity"]),
        escape(check["unexpected_count"]),
        _examples(check),
    ]
    return f'<tr class="{css}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(checks: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in
                   ("result", "expectation", "column", "description", "severity", "failing rows", "examples"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>" + "\n".join(map(_check_row, checks)) + \
        "</tbody></table>"


def render_validation_html(result: ValidationResult, source: str, data_source: str | None = None) -> str:
    """The whole report page for `result` of validating `source` (the manifest's
    path; data_source: ingest.source, for the synthetic banner): status, the
    failed error checks first, then warnings, then every check in suite order.
    Row numbers are 1-based manifest data rows (row 1 = line 2 of the CSV)."""
    errors = [c for c in result.checks if not c["success"] and c["severity"] == "error"]
    status = '<span class="status pass">passed</span>' if result.success else \
        '<span class="status fail">FAILED</span>'
    parts = [
        f"<h1>Manifest validation {status}</h1>",
        synthetic_banner(data_source),
        f"<p><code>{escape(source)}</code>: {result.rows} rows, {len(result.checks)} checks, "
        f"{len(errors)} failed, {len(result.warnings)} warnings, {len(result.rejected_rows)} rejected CSV rows. "
        f"Row numbers count manifest data rows from 1 (row 1 is line 2 of the CSV). "
        f"Suite: <code>pipeline/data/validate.py</code> (Great Expectations).</p>",
    ]
    if errors:
        parts += ["<h2>Failed checks</h2>", _table(errors)]
    check_warnings = result.warnings[: len(result.warnings) - len(result.ages_missing)]  # ages: their own table
    if check_warnings:
        parts.append('<h2>Warnings</h2><ul>' +
                     "".join(f"<li>{escape(w)}</li>" for w in check_warnings) + "</ul>")
    parts += _row_problem_sections(result)
    parts += ["<h2>All checks</h2>", _table(result.checks)]
    return html_page(f"Manifest validation: {source}", "\n".join(parts), STYLE)


def write_validation_report(result: ValidationResult, source: str, out_dir: Path,
                            data_source: str | None = None) -> Path:
    """Replace out_dir with one holding index.html (atomically); returns the page's path."""
    from pipeline.core.atomic import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        (staging / REPORT_FILE).write_text(render_validation_html(result, source, data_source),
                                             encoding="utf-8")
    return out_dir / REPORT_FILE
