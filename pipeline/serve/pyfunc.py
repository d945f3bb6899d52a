"""The registered model as an MLflow pyfunc: raw films in, one answer per film.

    pyfunc = mlflow.pyfunc.load_model("models:/chestxray@champion")
    pyfunc.predict(pd.DataFrame({"image": [png_bytes, dicom_bytes]}))

The input is a DataFrame (the signature says so) with a binary column
`image`, each cell a film file's bytes (PNG, JPEG, 8/16-bit, DICOM,
compressed DICOM), and optional columns `age`, `sex` and `view`. Over
`mlflow models serve`, binary cells travel base64-encoded in
`dataframe_split` or `dataframe_records` JSON. Each film is read, checked and
preprocessed by the code `cxr predict` uses (pipeline.serve.film_scores), so
a film refused there is refused here with the same reason, and scored to the
same probabilities. A model trained with patient metadata takes each film's
age, sex and view from its row, else from its DICOM header.

A cell may instead hold a preprocessed film (float32 (size, size, 1), grey
values 0..255, pipeline.serve.predict.preprocess_xray), e.g.
predict({"image": images}) with images (n, size, size, 1).

The answer has one row per film, in order: the 14 probabilities (after the
version's recalibration), `findings` (those at or above the version's
thresholds), `model_name` and `model_version` (the registered version that
answered: its number is traced in the promotion history), and `error`, the
reason a film was not scored (its probabilities are then null). One bad film
never fails the batch; a request over the version's max_films_per_request
(evaluate.serving) is refused whole.

The Keras model travels as the artifact KERAS_ARTIFACT (a plain .keras file),
so pipeline.serve.predict.load_model reads it without unpickling anything.
"""
from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import KERAS_ARTIFACT, REGISTRATION_FILE
from pipeline.core.patient import (
    IMAGE_INPUT,
    PATIENT_FEATURES,
    PATIENT_INPUT,
    PatientMetadataError,
    decode_patient_rows,
    encode_patient_input,
)
from pipeline.records.film import DEFAULT_CHECKS
from pipeline.records.image_file import MAX_FILE_BYTES, SIGNATURE_BYTES, ImageError, signature_format
from pipeline.serve.film_scores import FilmScore, score_films
from pipeline.serve.films import Film, film_from_bytes, header_patient
from pipeline.serve.xray_model import model_from_registry_metadata

ANSWER_COLUMNS = (*FINDINGS, "findings", "model_name", "model_version", "error")
SERVED_PATIENT_REMEDY = "give the film's age, sex and view columns"
NO_SERVED_PATIENT = f"no sex or view for a PNG/JPEG (a DICOM carries them in its header): {SERVED_PATIENT_REMEDY}"
# Films per model call (memory): a request of max_films_per_request is scored in calls of this many.
BATCH_SIZE = 16


class TooManyFilms(MlflowException):
    """A request over the version's max_films_per_request: MLflow's server answers
    HTTP 400 with this message (any other exception's it would bury in a trace)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


# MLflow 3.17 warns (once, at class creation) that predict has no type hints;
# its type-hint schemas cannot express a film's bytes, so it stays untyped.
class ChestXrayPyfunc(mlflow.pyfunc.PythonModel):
    """The 14 probabilities, positive findings and the answering version, per film."""

    def load_context(self, context) -> None:
        """The served model from the version's own MLmodel metadata (thresholds,
        fit, recalibration, serving limits), built as load_model builds it."""
        import keras
        from mlflow.models import Model

        keras_file = Path(context.artifacts[KERAS_ARTIFACT])
        model_dir = keras_file.parents[1]  # the artifact is <model>/artifacts/model.keras
        metadata = Model.load(str(model_dir / "MLmodel")).metadata or {}
        registration = read_registration(model_dir)
        self.served = model_from_registry_metadata(str(model_dir), keras.models.load_model(keras_file, compile=False),
                                                   metadata)
        self.served.version = registration.get("version")
        self.model_name = registration.get("name")
        serving = metadata.get("serving") or {}
        self.max_films = serving.get("max_films_per_request")
        mb = serving.get("max_film_mb")
        self.max_film_bytes = MAX_FILE_BYTES if mb is None else min(MAX_FILE_BYTES, int(float(mb) * 2**20))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        rows = film_rows(model_input)
        if self.max_films is not None and len(rows) > self.max_films:
            raise TooManyFilms(f"{len(rows)} films in one request; this model version takes at most "
                               f"{self.max_films} (evaluate.serving.max_films_per_request): send several requests")
        names = [f"film {i}" for i in range(len(rows))]
        scores = [FilmScore(name) for name in names]
        readers = [self.reader(cell, name) for cell, name in zip(rows[IMAGE_INPUT], names)]
        patient_of = (lambda i: lambda film: row_patient(rows, i, film)) if self.served.uses_patient_metadata else None
        score_films(self.served, scores, readers, patient_of, BATCH_SIZE, command_line=False)
        return self.answer(scores)

    def reader(self, cell, name: str):
        """How one cell becomes a Film: a film file's bytes (base64 text too), or a preprocessed film."""
        size, fit = self.served.image_size, self.served.fit
        if isinstance(cell, (bytes, bytearray, memoryview, str)):
            return lambda: film_from_bytes(film_bytes(cell), name, size, fit, DEFAULT_CHECKS, self.max_film_bytes)
        return lambda: Film(preprocessed_pixels(cell, name, size))

    def answer(self, scores: list[FilmScore]) -> pd.DataFrame:
        version = None if self.served.version is None else str(self.served.version)
        records = [{**{f: score.probabilities.get(f) for f in FINDINGS}, "findings": list(score.findings),
                    "model_name": self.model_name, "model_version": version, "error": score.error}
                   for score in scores]
        # object columns: a film not scored gets null, not NaN (which is not JSON), in the server's answer
        return pd.DataFrame({column: pd.Series([record[column] for record in records], dtype=object)
                             for column in ANSWER_COLUMNS})


def read_registration(model_dir: Path) -> dict:
    """{"name", "version"} of the registered version this model is, {} when it is none (or not yet)."""
    try:
        return json.loads((model_dir / REGISTRATION_FILE).read_text())
    except (OSError, ValueError):
        return {}


def film_rows(model_input) -> pd.DataFrame:
    """The input as a DataFrame with an `image` column, whatever form MLflow or
    a caller gives it: a DataFrame, {"image": array, "metadata": ...} or an array
    of preprocessed films (both forms reach here only when the pyfunc is called
    directly: MLflow makes a DataFrame of them first)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_INPUT not in model_input.columns:
            raise ValueError(f"expected a column {IMAGE_INPUT!r} (each film's bytes), got columns "
                             f"{list(model_input.columns)}")
        return model_input.reset_index(drop=True)
    if isinstance(model_input, dict):
        images = list(np.asarray(model_input[IMAGE_INPUT], dtype=np.float32))
        frame = pd.DataFrame({IMAGE_INPUT: images})
        metadata = model_input.get(PATIENT_INPUT)
        if metadata is not None:  # any form encode_patient_input takes, as rows of age, sex and view
            rows = decode_patient_rows(encode_patient_input(metadata, len(images)))
            for feature in PATIENT_FEATURES:
                frame[feature] = [row[feature] for row in rows]
        return frame
    return pd.DataFrame({IMAGE_INPUT: list(np.asarray(model_input, dtype=np.float32))})


def film_bytes(cell) -> bytes:
    """A cell's film file bytes. MLflow decodes base64 for `dataframe_split` and
    `dataframe_records`; a client that sends the base64 text another way
    (`inputs`) has it decoded here, when the text decodes to a film."""
    data = cell.encode("ascii", "replace") if isinstance(cell, str) else bytes(cell)
    if signature_format(data[:SIGNATURE_BYTES], "") is None:
        try:
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return data
        if signature_format(decoded[:SIGNATURE_BYTES], "") is not None:
            return decoded
    return data


def preprocessed_pixels(cell, name: str, size: int) -> np.ndarray:
    """A preprocessed film (preprocess_xray's output) as float32 (size, size, 1), or
    ImageError: a film read another way (another size, raw 16-bit values) would be scored without complaint."""
    try:
        array = np.asarray(cell, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"{name}: neither a film file's bytes nor a preprocessed film ({exc})") from None
    if array.ndim == 2:
        array = array[..., None]
    if array.shape != (size, size, 1):
        raise ImageError(f"{name}: a preprocessed film must have shape ({size}, {size}, 1) "
                         f"(pipeline.serve.predict.preprocess_xray), got {array.shape}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ImageError(f"{name}: a preprocessed film has grey values 0..255 (pipeline.serve.predict.preprocess_"
                         f"xray), got {np.nanmin(array):g}..{np.nanmax(array):g}")
    return array


def row_patient(rows: pd.DataFrame, i: int, film: Film) -> dict:
    """Film i's {"age", "sex", "view"}: its row's columns when sex and view are there, else its DICOM header's."""
    given = {feature: rows[feature].iloc[i] if feature in rows.columns else None for feature in PATIENT_FEATURES}
    given = {key: None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value
             for key, value in given.items()}
    if given["sex"] is not None and given["view"] is not None:
        return given
    if film.patient is not None:
        return header_patient(film.patient, SERVED_PATIENT_REMEDY)
    raise PatientMetadataError(NO_SERVED_PATIENT)
