"""Scoring a batch of films, one code path for `cxr predict` and the model
server (pipeline.serve.pyfunc): each film read and checked, its patient
metadata found when the model takes it, the readable ones scored in one model
call (recalibrated, at the model's thresholds), and every failure kept as
that film's reason: one bad film never fails the batch."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.patient import PatientMetadataError, encode_patient
from pipeline.records.image_file import ImageError
from pipeline.serve.film_errors import error_reason
from pipeline.serve.films import Film
from pipeline.serve.xray_model import XrayModel

# How a film arrives: a function that reads, checks and preprocesses it.
FilmReader = Callable[[], Film]
# Where a film's {"age", "sex", "view"} come from, given the film (its DICOM header).
PatientOf = Callable[[Film], dict]


@dataclass
class FilmScore:
    """One film's outcome: probabilities and positive findings, or the reason it has none."""

    name: str
    probabilities: dict[str, float] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    error: str | None = None  # the reason only: the film is `name`
    metadata: np.ndarray | None = None  # encoded (pipeline.core.patient), for a model that takes it

    def fail(self, reason: str) -> None:
        self.error = reason


def read_for_scoring(score: FilmScore, read: FilmReader, patient_of: PatientOf | None,
                     command_line: bool = True) -> np.ndarray | None:
    """The film's preprocessed pixels (and score.metadata when `patient_of`), or
    None after score.fail(reason). Any failure stays this film's."""
    try:
        film = read()
        if patient_of is not None:
            score.metadata = encode_patient(**patient_of(film))
        return film.pixels
    except (ImageError, PatientMetadataError) as exc:
        score.fail(error_reason(exc, score.name, command_line))
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one hostile film must not sink the others
        score.fail(f"cannot read: {type(exc).__name__}: {exc}")
    return None


def score_films(model: XrayModel, scores: list[FilmScore], readers: list[FilmReader],
                patient_of: Callable[[int], PatientOf] | None, batch_size: int,
                command_line: bool = True) -> tuple[list[FilmScore], np.ndarray]:
    """Fill in `scores` (one per reader): one model call for the films that
    read. `patient_of(i)` says where film i's patient metadata comes from
    (None: the model takes none). Returns the scored films and their pixels
    (for Grad-CAM)."""
    loaded = [(score, pixels) for i, (score, read) in enumerate(zip(scores, readers))
              if (pixels := read_for_scoring(score, read, None if patient_of is None else patient_of(i),
                                             command_line)) is not None]
    if not loaded:
        return [], np.zeros((0, model.image_size, model.image_size, 1), np.float32)
    images = np.stack([pixels for _, pixels in loaded])
    encoded = np.stack([score.metadata for score, _ in loaded]) if patient_of is not None else None
    for (score, _), probabilities in zip(loaded, model.predict(images, encoded, batch_size=batch_size)):
        score.probabilities = {f: float(p) for f, p in zip(model.findings, probabilities)}
        score.findings = model.positive_findings(probabilities)
    return [score for score, _ in loaded], images
