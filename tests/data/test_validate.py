"""The validate stage's Great Expectations suite on the manifest."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.core.labels import FINDINGS, NO_FINDING, format_finding_labels
from pipeline.data.manifest import MANIFEST_COLUMNS, MANIFEST_DTYPES, read_manifest
from pipeline.data.validate import ValidationResult, build_manifest_suite, validate_manifest
from pipeline.data.validation_summary import format_failure_summary

# 10 patients, 3 images each; patient-wise splits: 6 train, 2 val, 2 test.
PATIENT_SPLITS = {1: "train", 2: "train", 3: "train", 4: "train", 5: "train", 6: "train",
                  7: "val", 8: "val", 9: "test", 10: "test"}


def make_manifest(patients: dict[int, str] = PATIENT_SPLITS, images_per_patient: int = 3) -> pd.DataFrame:
    """A small valid manifest in which every finding has a positive in every split."""
    rows = []
    for patient, split in patients.items():
        for follow_up in range(images_per_patient):
            rows.append({"patient_id": patient, "follow_up": follow_up, "split": split})
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    for split_rows in by_split.values():
        # The last image of each split is "No Finding"; the others share the 14 findings.
        carriers = split_rows[:-1] or split_rows
        for i, row in enumerate(split_rows):
            hot = [0] * len(FINDINGS)
            if row is not split_rows[-1] or len(split_rows) == 1:
                for j in range(len(FINDINGS)):
                    if j % len(carriers) == i:
                        hot[j] = 1
            row["hot"] = hot
    records = []
    for n, row in enumerate(rows):
        image_id = f"{row['patient_id']:08d}_{row['follow_up']:03d}.png"
        record = {
            "image_id": image_id,
            "path": f"data/x/images/{image_id}",
            "patient_id": row["patient_id"],
            "follow_up": row["follow_up"],
            "age": 20 + 3 * row["patient_id"] + row["follow_up"],
            "sex": "M" if row["patient_id"] % 2 else "F",
            "view": "PA" if n % 3 else "AP",
            "finding_labels": format_finding_labels(row["hot"]),
            **dict(zip(FINDINGS, row["hot"])),
            "split": row["split"],
        }
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS))
    return frame.astype(MANIFEST_DTYPES)


def failing(result: ValidationResult, severity: str | None = None) -> list[dict]:
    return [c for c in result.checks
            if not c["success"] and (severity is None or c["severity"] == severity)]


def only_failure(result: ValidationResult, expectation: str, column: str | None) -> dict:
    """Assert the result fails, on exactly this one error check, and return it."""
    assert result.success is False
    failed = failing(result, "error")
    assert [(c["expectation"], c["column"]) for c in failed] == [(expectation, column)], failed
    assert failed[0]["severity"] == "error"
    return failed[0]


def rows_of(check: dict) -> list[int]:
    return [e["row"] for e in check["examples"]]


def test_valid_manifest_passes():
    manifest = make_manifest()
    assert len(manifest) == 30
    assert (manifest.finding_labels == NO_FINDING).sum() >= 3
    result = validate_manifest(manifest)
    assert result.success, format_failure_summary(result, "manifest.csv")
    assert failing(result) == []
    assert result.warnings == []
    report = result.to_json_dict()
    assert report["success"] is True and report["rows"] == 30 and report["failed"] == 0
    assert len(report["checks"]) == len(build_manifest_suite().expectations)
    json.dumps(report, allow_nan=False)  # strict JSON as is
    for check in report["checks"]:
        assert set(check) >= {"expectation", "column", "description", "success",
                              "severity", "unexpected_count", "examples"}
    # the caller's frame is left alone (no helper columns, same index)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest.index[0] == 0


def test_manifest_read_back_from_csv_passes(tmp_path):
    path = tmp_path / "manifest.csv"
    make_manifest().to_csv(path, index=False)
    result = validate_manifest(read_manifest(path))
    assert result.success, format_failure_summary(result, str(path))


def test_non_integer_age_reports_rows():
    manifest = make_manifest().astype({"age": "float64"})
    manifest.loc[3, "age"] = float("nan")
    result = validate_manifest(manifest)
    check = only_failure(result, "expect_column_values_to_be_in_type_list", "age")
    assert check["unexpected_count"] == 1
    assert check["examples"] == [{"row": 4, "image_id": "00000002_000.png", "value": None}]
    json.dumps(result.to_json_dict(), allow_nan=False)


def test_suite_is_code_with_severities():
    suite = build_manifest_suite()
    types = {e.expectation_type for e in suite.expectations}
    assert "expect_table_columns_to_match_ordered_list" in types
    assert "expect_column_values_to_be_unique" in types
    severities = {str(e.severity.value) for e in suite.expectations}
    assert severities == {"critical", "warning"}


def test_bad_image_id_pattern():
    manifest = make_manifest()
    manifest.loc[4, "image_id"] = "../x.png"
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_match_regex", "image_id")
    assert check["unexpected_count"] == 1
    assert check["examples"] == [{"row": 5, "value": "../x.png"}]


def test_duplicate_image_id():
    manifest = make_manifest()
    manifest.loc[7, "image_id"] = manifest.loc[2, "image_id"]
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_be_unique", "image_id")
    assert check["unexpected_count"] == 2  # both copies
    assert rows_of(check) == [3, 8]
    assert {e["value"] for e in check["examples"]} == {manifest.loc[2, "image_id"]}


def test_age_out_of_range():
    manifest = make_manifest()
    manifest.loc[11, "age"] = 414
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_be_between", "age")
    assert check["unexpected_count"] == 1
    assert check["examples"] == [{"row": 12, "image_id": "00000004_002.png", "value": 414}]


def test_missing_ages_pass_and_read_back_empty(tmp_path):
    manifest = make_manifest()
    manifest.loc[[2, 11], "age"] = pd.NA
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    assert path.read_text().splitlines()[3].split(",")[4] == ""  # an empty field, not "<NA>" or "nan"
    again = read_manifest(path)
    assert str(again["age"].dtype) == "Int64" and again["age"].isna().sum() == 2
    result = validate_manifest(again)
    assert result.success, format_failure_summary(result, str(path))


def test_ages_kept_as_missing_are_warnings():
    note = {"file": "/data/nih/Data_Entry_2017.csv", "line": 1235, "image_id": "00001234_000.png",
            "value": "414", "reason": "age 414 outside 0..120"}
    result = validate_manifest(make_manifest(), ages_missing=[note])
    assert result.success
    assert result.warnings == ["age 414 outside 0..120 kept as missing: 00001234_000.png "
                               "(Data_Entry_2017.csv line 1235)"]
    assert result.to_json_dict()["ages_missing"] == [note]


REJECTED = [{"file": "Data_Entry_2017.csv", "line": 7, "image_id": "../../../../etc/passwd",
             "reason": "Image Index is a path, not a plain file name like 00000001_000.png"}]


def test_rejected_rows_fail_unless_dropped():
    failed = validate_manifest(make_manifest(), rejected_rows=REJECTED)
    assert failed.success is False and failing(failed) == []  # the rows alone fail it
    assert "1 rejected CSV rows (fail the run" in format_failure_summary(failed, "m.csv")
    dropped = validate_manifest(make_manifest(), rejected_rows=REJECTED, on_invalid="drop")
    assert dropped.success is True
    assert dropped.to_json_dict()["rejected_rows"] == REJECTED and dropped.to_json_dict()["on_invalid"] == "drop"


def test_folder_source_suite_takes_paths_and_unknown_sex():
    manifest = make_manifest()
    manifest["image_id"] = [f"ward{i % 3}/film {i}.PNG" for i in range(len(manifest))]
    manifest.loc[[0, 5], "sex"] = ""
    manifest.loc[7, "view"] = ""
    result = validate_manifest(manifest, source="folder")
    assert result.success, format_failure_summary(result, "m.csv")
    nih = validate_manifest(manifest)
    assert {(c["column"], c["unexpected_count"]) for c in failing(nih, "error")} == {
        ("image_id", 30), ("sex", 2), ("view", 1)}
    manifest.loc[3, "image_id"] = "ward1/../../etc/passwd.png"
    check = only_failure(validate_manifest(manifest, source="folder"), "expect_column_values_to_match_regex",
                         "image_id")
    assert check["examples"] == [{"row": 4, "value": "ward1/../../etc/passwd.png"}]


def test_unknown_sex():
    manifest = make_manifest()
    manifest.loc[0, "sex"] = "X"
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_be_in_set", "sex")
    assert check["unexpected_count"] == 1
    assert check["examples"] == [{"row": 1, "image_id": "00000001_000.png", "value": "X"}]


def test_unknown_view():
    manifest = make_manifest()
    manifest.loc[[3, 29], "view"] = "LL"
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_be_in_set", "view")
    assert check["unexpected_count"] == 2
    assert check["examples"] == [{"row": 4, "image_id": "00000002_000.png", "value": "LL"},
                                 {"row": 30, "image_id": "00000010_002.png", "value": "LL"}]


def test_unknown_finding_name():
    manifest = make_manifest()
    manifest.loc[9, "finding_labels"] = manifest.loc[9, "finding_labels"] + "|Pneumonitis"
    bad = manifest.loc[9, "finding_labels"]
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_match_regex",
                         "finding_labels")
    assert check["unexpected_count"] == 1
    assert check["examples"] == [{"row": 10, "image_id": "00000004_000.png", "value": bad}]


def test_no_finding_combined_with_a_finding():
    manifest = make_manifest()
    row = manifest.index[manifest.finding_labels == NO_FINDING][0]
    manifest.loc[row, "finding_labels"] = "No Finding|Mass"
    manifest.loc[row, "Mass"] = 1
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_match_regex",
                         "finding_labels")
    assert check["unexpected_count"] == 1
    assert check["examples"] == [{"row": row + 1, "image_id": manifest.loc[row, "image_id"],
                                  "value": "No Finding|Mass"}]


def test_multi_hot_disagrees_with_finding_labels():
    manifest = make_manifest()
    manifest.loc[13, "Mass"] = 1 - manifest.loc[13, "Mass"]
    result = validate_manifest(manifest)
    check = only_failure(result, "expect_column_values_to_be_null", "_multi_hot_mismatch")
    assert check["unexpected_count"] == 1
    assert rows_of(check) == [14]
    assert "Mass=" in check["examples"][0]["value"]
    assert "finding columns agree" in check["description"]


def test_patient_in_two_splits():
    manifest = make_manifest()
    # patient 7's last image (row 21) lands in test although patient 7 is in val
    manifest.loc[20, "split"] = "test"
    assert manifest.loc[20, "patient_id"] == 7
    check = only_failure(validate_manifest(manifest), "expect_column_values_to_be_between",
                         "_patient_split_count")
    assert check["unexpected_count"] == 3  # all of patient 7's rows
    assert check["examples"] == [
        {"row": 19, "image_id": "00000007_000.png", "value": 7, "patient_id": 7, "splits": ["test", "val"]}
    ]


def test_missing_column():
    manifest = make_manifest().drop(columns=["view"])
    result = validate_manifest(manifest)
    assert result.success is False
    columns_check = next(c for c in result.checks
                         if c["expectation"] == "expect_table_columns_to_match_ordered_list")
    assert columns_check["success"] is False
    assert columns_check["missing"] == ["view"]
    assert columns_check["unexpected_count"] == 1
    # checks on the missing column fail as "could not be evaluated", nothing else fails
    others = [c for c in failing(result) if c is not columns_check]
    assert others and all(c["column"] == "view" and "error" in c for c in others)
    summary = format_failure_summary(result, "data/manifest.csv")
    assert "missing column(s): view" in summary


def test_empty_manifest():
    manifest = make_manifest().iloc[0:0]
    result = validate_manifest(manifest)
    assert result.success is False
    check = next(c for c in failing(result)
                 if c["expectation"] == "expect_table_row_count_to_be_between")
    assert check["severity"] == "error"
    assert "empty" in check["error"]
    assert result.to_json_dict()["rows"] == 0
    assert "the manifest is empty" in format_failure_summary(result, "m.csv")


def test_finding_without_positive_in_a_split_only_warns():
    manifest = make_manifest()
    test_rows = manifest.split == "test"
    assert manifest.loc[test_rows, "Hernia"].sum() > 0
    for row in manifest.index[test_rows & (manifest.Hernia == 1)]:
        manifest.loc[row, "Hernia"] = 0
        hot = [int(manifest.loc[row, f]) for f in FINDINGS]
        manifest.loc[row, "finding_labels"] = format_finding_labels(hot)
    result = validate_manifest(manifest)
    assert result.success is True, format_failure_summary(result, "m.csv")
    assert result.warnings == ["Hernia has no positive in split 'test' (0 of 6 images)"]
    warned = failing(result)
    assert len(warned) == 1 and warned[0]["severity"] == "warning"
    assert warned[0]["column"] == "Hernia"


def test_failure_summary_names_source_expectation_and_row():
    manifest = make_manifest()
    manifest.loc[4, "image_id"] = "../x.png"
    manifest.loc[11, "age"] = 414
    manifest.loc[0, "sex"] = "X"
    result = validate_manifest(manifest)
    summary = format_failure_summary(result, "data/processed/manifest.csv")
    assert "data/processed/manifest.csv" in summary
    assert "expect_column_values_to_match_regex" in summary
    assert "expect_column_values_to_be_between" in summary
    assert "row 5" in summary and "'../x.png'" in summary
    assert "row 12 (00000004_002.png): 414" in summary
    assert len(summary.splitlines()) <= 40


def test_failure_summary_stays_on_one_screen_when_everything_fails():
    manifest = make_manifest()
    for f in FINDINGS:
        manifest[f] = 7
    manifest["sex"] = "?"
    manifest["view"] = "?"
    manifest["age"] = -1
    result = validate_manifest(manifest)
    summary = format_failure_summary(result, "m.csv")
    assert len(summary.splitlines()) <= 40
    assert "more failed checks" in summary


def test_real_nih_subset_manifest_passes(nih_subset):
    from tests.conftest import build_manifest

    manifest, _ = build_manifest(nih_subset, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    result = validate_manifest(manifest)
    assert result.success, format_failure_summary(result, "nih-subset manifest")
    assert result.rows == 300


@pytest.mark.parametrize("split", ["val", "test"])
def test_an_empty_or_one_patient_split_stops_validation_naming_it(split):
    """ingest.split.val=0, or a folder of three patients, used to train for nothing and fail after."""
    others = {patient: s for patient, s in PATIENT_SPLITS.items() if s != split}
    empty = validate_manifest(make_manifest(others))
    assert empty.success is False
    summary = format_failure_summary(empty, "m.csv")
    assert f"split '{split}' has films of 0 patient(s), fewer than the 2 it needs" in summary
    one = min(p for p, s in PATIENT_SPLITS.items() if s == split)
    result = validate_manifest(make_manifest({**others, one: split}))
    assert result.success is False
    assert f"split '{split}' has films of 1 patient(s)" in format_failure_summary(result, "m.csv")
    assert validate_manifest(make_manifest({**others, one: split}), min_split_patients=1).success is True
    with pytest.raises(ValueError, match="validate.min_split_patients must be a whole number >= 1, got 0"):
        validate_manifest(make_manifest(), min_split_patients=0)
