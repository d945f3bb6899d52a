"""The validate stage's self-contained HTML report (reports/validation/index.html)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.data.validate import validate_manifest
from pipeline.data.validation_report import render_validation_html, write_validation_report
from tests.conftest import PROJECT_ROOT
from tests.data.test_validate import make_manifest


def test_report_names_the_failing_expectation_and_row(tmp_path):
    manifest = make_manifest()
    manifest.loc[11, "age"] = 414
    manifest.loc[4, "image_id"] = "<script>x</script>.png"
    page = write_validation_report(validate_manifest(manifest), "data/ingest/manifest.csv", tmp_path / "v")
    text = page.read_text()
    assert page == tmp_path / "v" / "index.html"
    assert "FAILED" in text and "data/ingest/manifest.csv" in text
    failed = text.split("<h2>Failed checks</h2>")[1].split("<h2>All checks</h2>")[0]
    assert "expect_column_values_to_be_between" in failed and "age is between 0 and 120" in failed
    assert "row 12 (00000004_002.png): <code>414</code>" in failed
    assert "expect_column_values_to_match_regex" in failed
    assert "<script>" not in text and "&lt;script&gt;" in text  # values are escaped
    assert "http://" not in text and "https://" not in text  # nothing fetched: works offline


def test_report_of_a_passing_manifest_is_deterministic():
    result = validate_manifest(make_manifest())
    text = render_validation_html(result, "m.csv")
    assert "passed" in text and "<h2>Failed checks</h2>" not in text
    assert text.count("<tr class=") == len(result.checks)
    assert text == render_validation_html(result, "m.csv")
    assert 'id="synthetic"' not in text and 'id="synthetic"' not in render_validation_html(result, "m.csv", "nih")
    assert '<p class="banner" id="synthetic">These films are a synthetic phantom' in render_validation_html(
        result, "m.csv", "phantom")


def test_report_lists_rejected_rows_and_missing_ages():
    rejected = [{"file": "Data_Entry_2017.csv", "line": 9, "image_id": "<b>00000001_000.png",
                 "reason": "unknown finding 'Pneumonitis' in 'Pneumonitis'"}]
    ages = [{"file": "Data_Entry_2017.csv", "line": 3, "image_id": "00000001_001.png", "value": "148",
             "reason": "age 148 outside 0..120"}]
    result = validate_manifest(make_manifest(), rejected_rows=rejected, ages_missing=ages, on_invalid="drop")
    text = render_validation_html(result, "m.csv")
    assert "passed" in text and "1 rejected CSV rows" in text
    rows = text.split("<h2>Rejected CSV rows (1)</h2>")[1].split("<h2>")[0]
    assert "<td>9</td><td>&lt;b&gt;00000001_000.png</td>" in rows and "Pneumonitis" in rows
    assert "left out of the manifest" in rows
    ages_part = text.split("<h2>Ages kept as missing (1)</h2>")[1].split("<h2>")[0]
    assert "<td>00000001_001.png</td><td>148</td>" in ages_part
    assert "<h2>Warnings</h2>" not in text  # the age is in its own table, not twice


def stage_project(tmp_path, manifest, rejected_lines: str = "", ages: list | None = None, **validate) -> Path:
    """A project folder with what the validate stage reads: params, the manifest and ingest's outputs."""
    (tmp_path / "data" / "ingest").mkdir(parents=True)
    (tmp_path / "reports").mkdir()
    manifest.to_csv(tmp_path / "data" / "ingest" / "manifest.csv", index=False)
    (tmp_path / "data" / "ingest" / "rejected_rows.csv").write_text("file,line,image_id,reason\n" + rejected_lines)
    (tmp_path / "reports" / "ingest.json").write_text(json.dumps({"ages_missing": ages or []}))
    paths = {"manifest": "data/ingest/manifest.csv", "validated_dir": "data/validated",
             "validated_manifest": "data/validated/manifest.csv", "rejected_rows": "data/ingest/rejected_rows.csv",
             "ingest_report": "reports/ingest.json", "reports": "reports",
             "validation_report": "reports/validation", "metrics": "metrics"}
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["paths"].update(paths)
    params["ingest"]["source"] = "nih"
    params["validate"].update(validate)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run_validate(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "validate.py")], cwd=project,
                          capture_output=True, text=True, timeout=300)


def test_validate_stage_writes_the_report_when_it_fails(tmp_path):
    manifest = make_manifest()
    manifest.loc[4, "age"] = 414
    run = run_validate(stage_project(tmp_path, manifest))
    assert run.returncode == 1, run.stderr
    assert "reports/validation/index.html" in run.stderr
    assert "row 5 (00000002_001.png): 414" in run.stderr
    text = (tmp_path / "reports" / "validation" / "index.html").read_text()
    assert "expect_column_values_to_be_between" in text and "row 5 (00000002_001.png): <code>414</code>" in text
    assert not (tmp_path / "data" / "validated").exists()
    assert (tmp_path / "reports" / "rejected_rows.csv").read_text() == "file,line,image_id,reason\n"


def test_validate_stage_names_every_rejected_row_then_drop_goes_on(tmp_path):
    lines = "".join(f"Data_Entry_2017.csv,{n},0000{n:04d}_000.png,unknown finding 'X' in 'X'\n"
                    for n in range(2, 62))
    project = stage_project(tmp_path, make_manifest(), lines)
    run = run_validate(project)
    assert run.returncode == 1, run.stderr
    err = run.stderr.splitlines()
    assert "  Data_Entry_2017.csv: line 2: 00000002_000.png: unknown finding 'X' in 'X'" in err
    assert sum("Data_Entry_2017.csv: line" in line for line in err) == 50
    assert "  ... and 10 more, all in reports/rejected_rows.csv" in err
    assert err[-1].startswith("validate: error: data/ingest/manifest.csv failed validation: 60 rejected CSV row(s)")
    assert len((project / "reports" / "rejected_rows.csv").read_text().splitlines()) == 61
    assert json.loads((project / "metrics" / "validate.json").read_text())["rejected_rows"] == 60

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validate"]["on_invalid"] = "drop"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run = run_validate(project)
    assert run.returncode == 0, run.stderr
    assert "left out, the run goes on" in run.stderr
    assert (project / "data" / "validated" / "manifest.csv").is_file()
    assert len((project / "reports" / "rejected_rows.csv").read_text().splitlines()) == 61
