"""A served model: a Keras classifier with its label order, operating
thresholds, preprocessing and recalibration, and the errors of a model that
cannot be served."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.labels import FINDINGS, NUM_FINDINGS
from pipeline.core.model_io import image_size_of, model_inputs, uses_patient_metadata
from pipeline.core.recalibration import served_probabilities
from pipeline.records.film import FilmChecks
from pipeline.serve.films import DEFAULT_FIT, Film, image_batch, patient_batch, read_film

if TYPE_CHECKING:  # Keras (TensorFlow) loads with the first model, so that a broken store is reported in seconds
    import keras

DEFAULT_THRESHOLD = 0.5


class ModelLoadError(RuntimeError):
    """A model URI or file that cannot be served; the message names it and says why."""


class ModelStoreError(ModelLoadError):
    """The tracking store a models:/ or runs:/ URI needs is missing, not an MLflow store, or fails."""


@dataclass
class XrayModel:
    """A Keras classifier with what serving it needs: label order, operating
    thresholds and the preprocessing it was trained with."""

    keras_model: keras.Model
    thresholds: dict[str, float]
    image_size: int
    fit: str = DEFAULT_FIT
    source: str = ""
    # Where the thresholds came from: the model's metadata, a file, or the 0.5 default.
    thresholds_source: str = ""
    findings: tuple[str, ...] = FINDINGS
    # Fitted on validation by the evaluate stage (evaluate.calibration); None = raw outputs.
    recalibration: dict | None = None
    # The registered version and run an MLflow URI resolved to; None for a .keras file (and version for runs:/).
    version: str | None = None
    run_id: str | None = None
    checks: FilmChecks = field(default_factory=FilmChecks)
    # The registered version's reference profile (pipeline.monitor.reference), when it has one.
    reference: dict | None = None

    def read(self, path: Path | str) -> Film:
        """A film checked (self.checks) and preprocessed for this model, with its DICOM patient fields."""
        return read_film(path, self.image_size, self.fit, self.checks)

    def preprocess(self, path: Path | str) -> np.ndarray:
        return self.read(path).pixels

    def identity(self) -> str:
        """Which model answered: the URI, and the registered version and run it resolved to."""
        version = [f"= version {self.version}"] if self.version else []
        run = [f"(run {self.run_id})"] if self.run_id else []
        return " ".join([self.source, *version, *run])

    @property
    def uses_patient_metadata(self) -> bool:
        """Whether predict needs each image's age, sex and view."""
        return uses_patient_metadata(self.keras_model)

    def predict(self, images: np.ndarray, metadata=None, batch_size: int = 32) -> np.ndarray:
        """Probabilities in `findings` order: (14,) for one image, (n, 14) for a batch.
        `metadata`: required by a model trained with it (see patient_batch)."""
        batch, single = image_batch(images, self.image_size)
        inputs = model_inputs(self.keras_model, batch, patient_batch(metadata, len(batch)))
        probabilities = self.recalibrate(self.keras_model.predict(inputs, batch_size=batch_size, verbose=0))
        return probabilities[0] if single else probabilities

    def recalibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The network's (n, 14) outputs through the model's recalibration (as
        is without one), in float64: the one numeric policy of
        pipeline.core.recalibration, so a film served here gets the decision
        evaluate reported for it."""
        return served_probabilities(probabilities, self.recalibration)

    def positive_findings(self, probabilities: np.ndarray) -> list[str]:
        """Names of the findings at or above their thresholds, for one image's (14,) probabilities."""
        # float64 whatever the caller passes: a float32 compared with a float64
        # threshold is rounded to float32 first (NumPy's rule), and may cross it
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (NUM_FINDINGS,):
            raise ValueError(f"expected {NUM_FINDINGS} probabilities, got shape {probabilities.shape}")
        return [f for f, p in zip(self.findings, probabilities) if p >= self.thresholds[f]]


def read_thresholds(thresholds: dict[str, float] | Path | str, name: str = "thresholds") -> dict[str, float]:
    """One threshold per finding, from a dict or a JSON file of {finding: threshold}."""
    if isinstance(thresholds, (str, Path)):
        name = str(thresholds)
        try:
            thresholds = json.loads(Path(thresholds).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{name}: cannot read thresholds: {exc}") from exc
    if not isinstance(thresholds, dict) or set(thresholds) != set(FINDINGS):
        found = sorted(thresholds) if isinstance(thresholds, dict) else type(thresholds).__name__
        raise ModelLoadError(f"{name}: expected one threshold for each of {', '.join(FINDINGS)}; got {found}")
    return {f: float(thresholds[f]) for f in FINDINGS}


def model_from_registry_metadata(uri: str, keras_model: keras.Model, metadata: dict) -> XrayModel:
    """The served model a registered version's MLmodel metadata describes (its
    thresholds, fit and recalibration), checked against this code's conventions:
    load_model and the registered pyfunc both build it here."""
    missing = [key for key in ("findings", "thresholds", "preprocessing") if key not in metadata]
    if missing:
        raise ModelLoadError(
            f"{uri}: model metadata lacks {', '.join(missing)} (not registered by the evaluate stage?)"
        )
    if list(metadata["findings"]) != list(FINDINGS):
        raise ModelLoadError(
            f"{uri}: the model's findings {metadata['findings']} differ from "
            f"pipeline.core.labels.FINDINGS {list(FINDINGS)}"
        )
    image_size = int(metadata["preprocessing"]["image_size"])
    if image_size_of(keras_model) != image_size:
        raise ModelLoadError(
            f"{uri}: metadata says image size {image_size}, the model takes {image_size_of(keras_model)}"
        )
    return XrayModel(
        keras_model,
        thresholds=read_thresholds(metadata["thresholds"], f"{uri} metadata"),
        image_size=image_size,
        fit=metadata["preprocessing"].get("fit", DEFAULT_FIT),
        source=uri,
        thresholds_source=f"{uri} metadata",
        recalibration=metadata.get("recalibration"),
    )
