"""The validate stage: a Great Expectations suite run on the manifest.

The suite is code (build_manifest_suite), run with an ephemeral, in-memory
Great Expectations context on the manifest DataFrame as one whole-frame batch.
Nothing is written to disk and nothing goes to the network.

Row numbers in reports are 1-based manifest data rows: row 1 is the first
row under the CSV header (line 2 of the file); each example names the row's
image_id too.

The suite follows the source's manifest contract (pipeline.data.sources): a folder source's image_id
is a relative path and its sex and view may be "" (unknown). Beside the
suite, the result carries what ingest set aside: the rejected CSV rows
(which fail the run when validate.on_invalid is fail) and the ages kept as
missing (warnings).

Two checks need values no single manifest column holds, so validate_manifest
derives helper columns (names start with "_") on a copy before validating:
  _multi_hot_mismatch   null where the 14 finding columns agree with
                        finding_labels, else a short description of the
                        disagreement (null too where finding_labels itself is
                        not valid: that row is reported by the labels check)
  _patient_split_count  how many distinct splits the row's patient is in
The helpers are appended after the manifest's columns, so the batch GX sees
has MANIFEST_COLUMNS + HELPER_COLUMNS, and that is the ordered list the column
check expects; reports speak of the manifest's own columns only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.core.labels import (
    FINDINGS,
    LABEL_SEPARATOR,
    MAX_AGE,
    MIN_AGE,
    NO_FINDING,
    SEXES,
    SPLITS,
    VIEWS,
    LabelError,
    parse_finding_labels,
)
from pipeline.core.settings import ON_INVALID
from pipeline.data.manifest import MANIFEST_COLUMNS
from pipeline.data.row_problems import age_warning
from pipeline.data.sources import ManifestContract, source_named

if TYPE_CHECKING:  # importing great_expectations takes ~3 s; only do it when validating
    import great_expectations

SUITE_NAME = "manifest"
# Every "|"-separated name is one of the 14 findings, or the whole value is
# exactly "No Finding" (never combined with a finding).
_FINDING_ALTERNATION = "|".join(re.escape(f) for f in FINDINGS)
FINDING_LABELS_REGEX = (
    rf"^(?:{re.escape(NO_FINDING)}"
    rf"|(?:{_FINDING_ALTERNATION})(?:{re.escape(LABEL_SEPARATOR)}(?:{_FINDING_ALTERNATION}))*)$"
)
# GX 1.24.1 matches pandas' nullable integers only by their class names (np.dtype("Int64") is an error).
INTEGER_TYPES = ["int64", "int32", "int16", "int8", "Int64Dtype", "Int32Dtype", "Int16Dtype", "Int8Dtype"]
MISMATCH_COLUMN = "_multi_hot_mismatch"
PATIENT_SPLITS_COLUMN = "_patient_split_count"
# Default of validate.min_split_patients: the validation and test splits each
# need films of this many patients (docs/real-data.md#small-splits).
MIN_SPLIT_PATIENTS = 2
HELPER_COLUMNS = (MISMATCH_COLUMN, PATIENT_SPLITS_COLUMN)  # appended after the manifest's
MAX_EXAMPLES = 5
NOT_EVALUATED = "not evaluated"


@dataclass
class ValidationResult:
    success: bool  # False if any expectation of severity "error" failed
    checks: list[dict] = field(default_factory=list)  # one per expectation
    warnings: list[str] = field(default_factory=list)  # failed warning checks, then one per age kept as missing
    rows: int = 0  # manifest data rows validated (helper columns don't add any)
    rejected_rows: list[dict] = field(default_factory=list)  # ingest's: file, line, image_id, reason
    ages_missing: list[dict] = field(default_factory=list)  # ingest's: file, line, image_id, value, reason
    on_invalid: str = "fail"

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c["success"]]

    @property
    def rejected_rows_fail(self) -> bool:
        return bool(self.rejected_rows) and self.on_invalid == "fail"

    def to_json_dict(self) -> dict:
        return {
            "success": self.success,
            "rows": self.rows,
            "failed": len(self.failed),
            "checks": self.checks,
            "warnings": self.warnings,
            "on_invalid": self.on_invalid,
            "rejected_rows": self.rejected_rows,
            "ages_missing": self.ages_missing,
        }


# --------------------------------------------------------------------------
# Great Expectations plumbing


def _gx():
    """Import great_expectations with its network-facing features off.

    GX 1.24.1 no longer ships the usage-statistics client (the `analytics_enabled`
    config field and the GX_ANALYTICS_ENABLED variable are inert leftovers), and
    its PyPI version checker is never called; both are switched off anyway so an
    older or newer GX stays quiet too.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def contract_of(source: str) -> ManifestContract:
    """The manifest contract of ingest.source (its record in pipeline.data.sources)."""
    return source_named(source).contract


@lru_cache(maxsize=4)
def _runner(contract: ManifestContract, min_split_patients: int = MIN_SPLIT_PATIENTS):
    """One ephemeral context + pandas datasource + whole-frame batch definition +
    validation definition per manifest contract, built once per process and reused."""
    kind = contract.name
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        # tqdm bars on stderr for every validation otherwise
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    asset = context.data_sources.add_pandas(f"manifest_source_{kind}").add_dataframe_asset("manifest")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole_manifest")
    suite = context.suites.add(contract_suite(contract, min_split_patients))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"manifest_validation_{kind}", data=batch_definition, suite=suite)
    )
    return definition


def split_floor(split: str, min_split_patients: int) -> int:
    """Patients a split needs: training needs one; validation chooses the
    thresholds and test gives the figures, and neither can from fewer than
    min_split_patients patients (validate.min_split_patients)."""
    return 1 if split == "train" else min_split_patients


def build_manifest_suite(source: str = "nih",
                         min_split_patients: int = MIN_SPLIT_PATIENTS) -> great_expectations.core.ExpectationSuite:
    """The manifest's expectations for a source (ingest.source), in report order."""
    return contract_suite(contract_of(source), min_split_patients)


def contract_suite(contract: ManifestContract,
                   min_split_patients: int = MIN_SPLIT_PATIENTS) -> great_expectations.core.ExpectationSuite:
    """The expectations of a manifest contract, in report order. Severity
    CRITICAL is reported as "error" (fails the stage), WARNING as "warning".
    Missing ages (<NA>) pass the age checks."""
    gx = _gx()
    # Collected first and handed to the constructor: ExpectationSuite.add_expectation
    # on a new suite whose name is already stored in the current context writes the
    # expectation into that stored suite (GX 1.24.1 looks suites up by name).
    expectations = [*column_expectations(gx.expectations, contract), *label_expectations(gx.expectations),
                    *split_expectations(gx.expectations, min_split_patients)]
    return gx.ExpectationSuite(name=f"{SUITE_NAME}_{contract.name}", expectations=expectations)


def column_expectations(E, contract: ManifestContract) -> list:
    """The manifest's columns, its image ids (by the source's contract) and patient fields."""
    expectations = [
        # the validated frame carries the derived helper columns after the manifest's
        E.ExpectTableColumnsToMatchOrderedList(column_list=[*MANIFEST_COLUMNS, *HELPER_COLUMNS],
                                               description="the columns are exactly the manifest's, in order"),
        E.ExpectTableRowCountToBeBetween(min_value=1, description="the manifest has at least one image row"),
        E.ExpectColumnValuesToNotBeNull(column="image_id", description="every row has an image_id"),
        E.ExpectColumnValuesToMatchRegex(column="image_id", regex=contract.image_id_regex,
                                         description=contract.image_id_description),
        E.ExpectColumnValuesToBeUnique(column="image_id", description="no image_id appears twice"),
    ]
    expectations += [E.ExpectColumnValuesToNotBeNull(column=column, description=f"every row has a {column}")
                     for column in ("path", "sex", "view", "finding_labels", "split")]
    expectations += [E.ExpectColumnValuesToBeInTypeList(column=column, type_list=INTEGER_TYPES,
                                                        description=f"{column} is an integer column")
                     for column in ("patient_id", "follow_up", "age")]
    expectations += [
        E.ExpectColumnValuesToBeBetween(column="follow_up", min_value=0, description="follow_up is 0 or more"),
        E.ExpectColumnValuesToBeBetween(column="age", min_value=MIN_AGE, max_value=MAX_AGE,
                                        description=f"age is between {MIN_AGE} and {MAX_AGE} years (or missing)"),
    ]
    for column, allowed in (("sex", SEXES), ("view", VIEWS), ("split", SPLITS)):
        unknown_allowed = column in contract.unknown_allowed
        expectations.append(E.ExpectColumnValuesToBeInSet(
            column=column, value_set=[*allowed, ""] if unknown_allowed else list(allowed),
            description=f"{column} is one of {', '.join(allowed)}" + (" or empty (unknown)" if unknown_allowed else ""),
        ))
    return expectations


def label_expectations(E) -> list:
    """The 14 finding columns, finding_labels and their agreement."""
    expectations = [E.ExpectColumnValuesToBeInSet(column=finding, value_set=[0, 1],
                                                  description=f"{finding} is 0 or 1") for finding in FINDINGS]
    return [*expectations,
            E.ExpectColumnValuesToMatchRegex(
                column="finding_labels", regex=FINDING_LABELS_REGEX,
                description=f"finding_labels is '|'-separated NIH finding names, or exactly '{NO_FINDING}' on its own"),
            E.ExpectColumnValuesToBeNull(column=MISMATCH_COLUMN,
                                         description="the 14 finding columns agree with finding_labels")]


def split_expectations(E, min_split_patients: int) -> list:
    """Patient-wise splits, each with enough patients, and a positive of every finding (a warning)."""
    from great_expectations.expectations.metadata_types import FailureSeverity
    from great_expectations.expectations.row_conditions import Column

    expectations = [E.ExpectColumnValuesToBeBetween(column=PATIENT_SPLITS_COLUMN, min_value=1, max_value=1,
                                                    description="no patient has images in more than one split")]
    for split in SPLITS:
        floor = split_floor(split, min_split_patients)
        expectations.append(E.ExpectColumnUniqueValueCountToBeBetween(
            column="patient_id", min_value=floor, row_condition=Column("split") == split,
            description=(f"split '{split}' has films of at least {floor} patient(s)"
                         + ("" if split == "train" else " (validate.min_split_patients)")),
            meta={"split": split, "floor": floor},
        ))
    for split in SPLITS:
        for finding in FINDINGS:
            expectations.append(E.ExpectColumnMaxToBeBetween(
                column=finding, min_value=1, row_condition=Column("split") == split, severity=FailureSeverity.WARNING,
                description=f"{finding} has at least one positive in split '{split}'",
                meta={"split": split, "finding": finding},
            ))
    return expectations


# --------------------------------------------------------------------------
# Derived helper columns


@lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(parse_finding_labels(text))
    except LabelError:
        return None


def _with_helper_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """A copy of the manifest indexed by 1-based row number, plus helper columns.
    A helper whose inputs are missing is left out, so its check reports the
    missing column instead of passing quietly."""
    frame = manifest.copy()
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    columns = set(frame.columns)

    if "finding_labels" in columns and columns.issuperset(FINDINGS):
        labels = frame["finding_labels"]
        codes, uniques = pd.factorize(labels, use_na_sentinel=True)
        parsed = [_parsed(u) if isinstance(u, str) else None for u in uniques]
        valid_unique = np.array([p is not None for p in parsed] + [False])  # [-1] = NA
        expected_unique = np.array(
            [p if p is not None else (0,) * len(FINDINGS) for p in parsed] + [(0,) * len(FINDINGS)],
            dtype=np.int64,
        ).reshape(-1, len(FINDINGS))
        valid = valid_unique[codes]
        expected = expected_unique[codes]
        actual = np.column_stack([
            pd.to_numeric(frame[f], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            for f in FINDINGS
        ])
        differs = actual != expected  # NaN never equals, so nulls count as disagreeing
        bad = valid & differs.any(axis=1)
        mismatch = np.full(len(frame), None, dtype=object)
        label_values = labels.to_numpy(dtype=object)
        for i in np.flatnonzero(bad):
            parts = [f"{FINDINGS[j]}={_plain(actual[i, j])}" for j in np.flatnonzero(differs[i])]
            mismatch[i] = f"{label_values[i]!r} but {', '.join(parts)}"
        frame[MISMATCH_COLUMN] = pd.Series(mismatch, index=frame.index, dtype=object)

    if {"patient_id", "split"} <= columns:
        frame[PATIENT_SPLITS_COLUMN] = (
            frame.groupby("patient_id", dropna=False)["split"].transform("nunique")
            .clip(lower=1)  # a patient whose splits are all null: the not-null check says so
            .astype("int64")
        )
    return frame


# --------------------------------------------------------------------------
# Running and reporting


def _plain(value: Any) -> Any:
    """A JSON-friendly Python value."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if value != value:  # NaN: not valid JSON
            return None
        return int(value) if value.is_integer() else value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if pd.isna(value):
        return None
    return str(value)


def _check_from_result(result, frame: pd.DataFrame, manifest_columns: list) -> dict:
    config = result.expectation_config
    kwargs = config.kwargs
    severity = getattr(config, "severity", None)
    severity = str(getattr(severity, "value", severity) or "critical").lower()
    details = result.result or {}
    check: dict[str, Any] = {
        "expectation": config.type,
        "column": kwargs.get("column"),
        "description": config.description or config.type,
        "success": bool(result.success),
        "severity": "warning" if severity.endswith("warning") else "error",
        "unexpected_count": int(details.get("unexpected_count") or 0),
        "examples": [],
    }
    if config.meta:
        check.update({k: v for k, v in config.meta.items() if k in ("split", "finding")})
    if "floor" in (config.meta or {}) and not result.success and "observed_value" in details:
        check["error"] = (f"split '{check['split']}' has films of {_plain(details['observed_value'])} patient(s), "
                          f"fewer than the {config.meta['floor']} it needs: the run would fail or report figures "
                          f"from nothing after training (change ingest.split or add data)")
    message = _exception_message(getattr(result, "exception_info", None))
    if check["column"] is not None and check["column"] not in frame.columns:
        message = f"column '{check['column']}' is missing"
    if message is not None:
        check["success"] = False
        check["error"] = f"{NOT_EVALUATED}: {message}"
        return check
    if "observed_value" in details:
        check["observed"] = _plain(details["observed_value"])
    if config.type == "expect_table_columns_to_match_ordered_list":
        # Speak of the manifest's own columns, not the helpers GX also saw.
        check["observed"] = [_plain(c) for c in manifest_columns]
        check["success"] = manifest_columns == list(MANIFEST_COLUMNS)
        if not check["success"]:
            check["missing"] = [c for c in MANIFEST_COLUMNS if c not in manifest_columns]
            check["unexpected"] = [_plain(c) for c in manifest_columns if c not in MANIFEST_COLUMNS]
            # offending columns; a pure reordering counts as 1
            check["unexpected_count"] = len(check["missing"]) + len(check["unexpected"]) or 1

    if config.type == "expect_column_values_to_be_in_type_list" and not check["success"]:
        # GX reports only the dtype; point at the rows that are not whole numbers.
        values = frame[check["column"]]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() | (numbers.fillna(0) % 1 != 0)
        check["unexpected_count"] = int(bad.sum())
        check["examples"] = [_example(frame, r, values[r], check["column"]) for r in bad[bad].index[:MAX_EXAMPLES]]
        return check

    rows = details.get("partial_unexpected_index_list") or []
    values = details.get("partial_unexpected_list") or []
    if check["column"] == PATIENT_SPLITS_COLUMN and not check["success"]:
        check["examples"] = _patient_examples(frame)
    elif rows:
        check["examples"] = [_example(frame, r, v, check["column"]) for r, v in zip(rows, values)][:MAX_EXAMPLES]
    return check


def _example(frame: pd.DataFrame, row: Any, value: Any, column: str | None) -> dict:
    """{"row", "image_id", "value"}: a failing row by number and by the image it
    describes (no image_id when the value is the image_id itself, or there is none)."""
    example = {"row": _plain(row)}
    if column != "image_id" and "image_id" in frame.columns and row in frame.index:
        example["image_id"] = _plain(frame.at[row, "image_id"])
    example["value"] = _plain(value)
    return example


def _exception_message(info: Any) -> str | None:
    """The first raised exception's message, if evaluating the expectation raised.
    GX 1.24.1 gives either one {"raised_exception", "exception_message", ...} dict
    or a dict of them keyed by the metric that raised."""
    if not isinstance(info, dict) or not info:
        return None
    candidates = [info] if "raised_exception" in info else list(info.values())
    for item in candidates:
        if isinstance(item, dict) and item.get("raised_exception"):
            text = str(item.get("exception_message") or "error").strip()
            return (text.splitlines() or ["error"])[0].removeprefix("Error: ")
    return None


def _patient_examples(frame: pd.DataFrame) -> list[dict]:
    """One example per offending patient (not one per row): first row, id, splits."""
    bad = frame[frame[PATIENT_SPLITS_COLUMN] != 1]
    examples = []
    for patient, rows in bad.groupby("patient_id", sort=False):
        splits = sorted(str(s) for s in rows["split"].dropna().unique())
        examples.append({
            "row": int(rows.index[0]),
            **({"image_id": _plain(rows["image_id"].iloc[0])} if "image_id" in rows.columns else {}),
            "value": _plain(patient),
            "patient_id": _plain(patient),
            "splits": splits,
        })
        if len(examples) == MAX_EXAMPLES:
            break
    return examples


def _warnings(checks: list[dict], frame: pd.DataFrame) -> list[str]:
    out: list[str] = []
    if len(frame) == 0:
        return out  # the row-count check already says the manifest is empty
    empty_splits_reported: set[str] = set()
    split_sizes = frame["split"].value_counts() if "split" in frame.columns else pd.Series(dtype=int)
    for check in checks:
        if check["severity"] != "warning" or check["success"]:
            continue
        split, finding = check.get("split"), check.get("finding")
        if split is None or finding is None:
            out.append(f"{check['description']}: not met")
            continue
        size = int(split_sizes.get(split, 0))
        if size == 0:
            if split not in empty_splits_reported:
                empty_splits_reported.add(split)
                out.append(f"split '{split}' has no images")
            continue
        if "error" in check:
            out.append(f"{finding} positives in split '{split}' {check['error']}")
            continue
        out.append(f"{finding} has no positive in split '{split}' (0 of {size} images)")
    return out


def validate_manifest(
    manifest: pd.DataFrame,
    source: str = "nih",
    rejected_rows: list[dict] | tuple = (),
    ages_missing: list[dict] | tuple = (),
    on_invalid: str = "fail",
    min_split_patients: int = MIN_SPLIT_PATIENTS,
) -> ValidationResult:
    """Run the manifest suite for `source` (ingest.source) on `manifest` (as
    read by read_manifest), with ingest's rejected rows and ages kept as
    missing (row_problems' dicts): rejected rows fail the result when
    `on_invalid` is "fail"; with "drop" they are only listed. Each missing
    age is a warning."""
    if on_invalid not in ON_INVALID:
        raise ValueError(f"validate.on_invalid must be one of {', '.join(ON_INVALID)}, got {on_invalid!r}")
    if isinstance(min_split_patients, bool) or not isinstance(min_split_patients, int) or min_split_patients < 1:
        raise ValueError(f"validate.min_split_patients must be a whole number >= 1, got {min_split_patients!r}")
    definition = _runner(contract_of(source), min_split_patients)
    frame = _with_helper_columns(manifest)
    suite_result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={
            "result_format": "SUMMARY",
            "partial_unexpected_count": MAX_EXAMPLES,
            "return_unexpected_index_query": False,
        },
    )
    manifest_columns = list(manifest.columns)
    checks = [_check_from_result(r, frame, manifest_columns) for r in suite_result.results]
    if len(frame) == 0:
        for check in checks:
            if check["expectation"] == "expect_table_row_count_to_be_between":
                check["error"] = "the manifest is empty: it has no image rows"
    # Keep the suite's order (GX may return results in another order).
    order = {e.id: i for i, e in enumerate(definition.suite.expectations)}
    ranked = sorted(
        zip(suite_result.results, checks),
        key=lambda rc: order.get(rc[0].expectation_config.id, len(order)),
    )
    checks = [c for _, c in ranked]
    result = ValidationResult(
        success=not any(c["severity"] == "error" and not c["success"] for c in checks),
        checks=checks,
        warnings=[*_warnings(checks, frame), *map(age_warning, ages_missing)],
        rows=len(manifest),
        rejected_rows=list(rejected_rows),
        ages_missing=list(ages_missing),
        on_invalid=on_invalid,
    )
    result.success = result.success and not result.rejected_rows_fail
    return result
