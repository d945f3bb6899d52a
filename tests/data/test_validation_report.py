"""The validate stage's self-contained HTML report (reports/validation/index.html)."""
from __future__ import annotations

import subprocess
import sys

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
    assert "row 12: <code>414</code>" in failed
    assert "expect_column_values_to_match_regex" in failed
    assert "<script>" not in text and "&lt;script&gt;" in text  # values are escaped
    assert "http://" not in text and "https://" not in text  # nothing fetched: works offline


def test_report_of_a_passing_manifest_is_deterministic():
    result = validate_manifest(make_manifest())
    text = render_validation_html(result, "m.csv")
    assert "passed" in text and "<h2>Failed checks</h2>" not in text
    assert text.count("<tr class=") == len(result.checks)
    assert text == render_validation_html(result, "m.csv")


def test_validate_stage_writes_the_report_when_it_fails(tmp_path):
    manifest = make_manifest()
    manifest.loc[4, "age"] = 414
    (tmp_path / "data" / "ingest").mkdir(parents=True)
    manifest.to_csv(tmp_path / "data" / "ingest" / "manifest.csv", index=False)
    paths = {"manifest": "data/ingest/manifest.csv", "validated_dir": "data/validated",
             "validated_manifest": "data/validated/manifest.csv",
             "validation_report": "reports/validation", "metrics": "metrics"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": paths}))
    run = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "validate.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "reports/validation/index.html" in run.stderr
    text = (tmp_path / "reports" / "validation" / "index.html").read_text()
    assert "expect_column_values_to_be_between" in text and "row 5: <code>414</code>" in text
    assert not (tmp_path / "data" / "validated").exists()
