"""Patient metadata as a second model input (train.use_metadata), encoded in one place.

NIH gives every image the patient's age in years, sex (M/F) and the view
position (PA/AP). AP films are taken of patients too ill to stand, so the
view alone carries information about the findings; age and sex shift their
prevalence. A model built with use_metadata takes, beside "image", the input
"metadata": float32 (batch, 3) in PATIENT_FEATURES order:

    age / 100 (years, 0..120 accepted), 1.0 if sex is M else 0.0, 1.0 if view is AP else 0.0

A missing age is imputed with IMPUTED_AGE (NIH's median age), so its first
value is IMPUTED_AGE / 100: at training, a record whose age is MISSING_AGE
(-1, pipeline.records.tfrecords) or outside 0..120; at serving, an age that
is None, NaN, pandas' NA or blank. Sex and view are always required, and an
age that is given must be 0..120 (a -1 typed by a user is refused, not
imputed: leave the age out instead). The input keeps its shape (n, 3), so
models registered before this rule load and serve unchanged.

The TF twin of encode_patient (for the shards) is pipeline.records.dataset's
patient_vector; a test checks that both give the same numbers.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from pipeline.core.labels import MAX_AGE, MIN_AGE, SEXES, VIEWS

# The Keras input name stays "metadata": models saved by earlier releases use it.
PATIENT_INPUT = "metadata"
IMAGE_INPUT = "image"
PATIENT_FEATURES = ("age", "sex", "view")
NUM_PATIENT_FEATURES = len(PATIENT_FEATURES)
# Age may be missing (imputed); sex and view may not.
REQUIRED_FEATURES = ("sex", "view")
AGE_SCALE = 100.0
# The age, in years, that stands in for a missing one: the median "Patient Age"
# of NIH ChestX-ray14, over the 112,120 rows (images) of Data_Entry_2017_v2020.csv
# whose age is 0..120 (all of them: the v2020 CSV's ages run 0..95; the 2017
# CSV's 16 typos, 148..414, would be left out). A fixed number, not a per-run
# statistic, so that training and serving impute the same value whatever the
# split; tests/model/test_metadata.py recomputes it from ../shared.
IMPUTED_AGE = 49
# The values encoded as 1.0 (the others in SEXES / VIEWS give 0.0).
MALE, ANTERO_POSTERIOR = "M", "AP"


# How a served model's "metadata" input is encoded, for its registry metadata.
PATIENT_ENCODING = (f"float32 (n, 3): age in years / 100 (a missing age: NIH's median, {IMPUTED_AGE} years), "
                    "1 if sex is M else 0, 1 if view is AP else 0")


class PatientMetadataError(ValueError):
    """Patient metadata that cannot be encoded; the message says which value and why."""


def age_is_missing(age) -> bool:
    """None, NaN, pandas' NA or a blank string (an empty CSV cell): no age given."""
    if isinstance(age, str):
        return not age.strip()
    return age is None or (np.ndim(age) == 0 and bool(pd.isna(age)))


def age_in_years(age) -> float:
    """A given age as years, IMPUTED_AGE when missing; a given age outside 0..120 is an error."""
    if age_is_missing(age):
        return float(IMPUTED_AGE)
    try:
        years = float(age)
    except (TypeError, ValueError):
        raise PatientMetadataError(f"age must be a number of years, got {age!r}") from None
    if np.isnan(years):  # "nan" as text
        return float(IMPUTED_AGE)
    if not MIN_AGE <= years <= MAX_AGE:
        raise PatientMetadataError(f"age must be {MIN_AGE}..{MAX_AGE} years (leave it out when unknown), "
                                   f"got {age!r}")
    return years


def encode_patient(age, sex, view) -> np.ndarray:
    """One patient's (age, sex, view) -> float32 (3,); a missing age is imputed (IMPUTED_AGE)."""
    years = age_in_years(age)
    sex_code = str(sex).strip().upper()
    if sex_code not in SEXES:
        raise PatientMetadataError(f"sex must be one of {', '.join(SEXES)}, got {sex!r}")
    view_code = str(view).strip().upper()
    if view_code not in VIEWS:
        raise PatientMetadataError(f"view must be one of {', '.join(VIEWS)} (view position), got {view!r}")
    return np.array(
        [years / AGE_SCALE, float(sex_code == MALE), float(view_code == ANTERO_POSTERIOR)], dtype=np.float32
    )


def encode_patient_rows(rows: Iterable[Mapping]) -> np.ndarray:
    """Several patients' {"age", "sex", "view"} -> float32 (n, 3). Sex and view
    are required; an absent or missing age is imputed (IMPUTED_AGE)."""
    encoded = []
    for i, row in enumerate(rows):
        missing = [key for key in REQUIRED_FEATURES if row.get(key) is None]
        if missing:
            raise PatientMetadataError(f"metadata row {i}: {', '.join(missing)} missing")
        try:
            encoded.append(encode_patient(row.get("age"), row["sex"], row["view"]))
        except PatientMetadataError as exc:
            raise PatientMetadataError(f"metadata row {i}: {exc}") from None
    return np.stack(encoded) if encoded else np.zeros((0, NUM_PATIENT_FEATURES), np.float32)


def encode_patient_input(metadata, count: int | None = None) -> np.ndarray:
    """Metadata as users give it -> float32 (n, 3): one patient's {"age", "sex",
    "view"}, a list of them, a DataFrame with those columns, or values
    already encoded, (3,) or (n, 3). With `count`, there must be that many rows."""
    if hasattr(metadata, "to_dict"):  # a pandas DataFrame
        metadata = metadata.to_dict("records")
    if isinstance(metadata, Mapping):
        metadata = [metadata]
    if isinstance(metadata, (list, tuple)) and metadata and all(isinstance(row, Mapping) for row in metadata):
        encoded = encode_patient_rows(metadata)
    else:
        encoded = np.asarray(metadata, dtype=np.float32).reshape(-1, NUM_PATIENT_FEATURES)
    if count is not None and len(encoded) != count:
        raise PatientMetadataError(f"{count} image(s) but metadata for {len(encoded)}")
    return encoded


def decode_patient_rows(encoded: np.ndarray) -> list[dict]:
    """encode_patient_input's float32 (n, 3) back to rows of age, sex and view
    (an imputed age comes back as IMPUTED_AGE): for callers that hold encoded
    metadata and an API that takes rows."""
    other_sex = next(code for code in SEXES if code != MALE)
    other_view = next(code for code in VIEWS if code != ANTERO_POSTERIOR)
    # rounded: float32 keeps age / 100 to about 1e-7, so 120 would come back as 120.0000048 (refused)
    return [{"age": round(float(age) * AGE_SCALE, 4), "sex": MALE if male >= 0.5 else other_sex,
             "view": ANTERO_POSTERIOR if ap >= 0.5 else other_view}
            for age, male, ap in np.asarray(encoded, dtype=np.float32).reshape(-1, NUM_PATIENT_FEATURES)]
