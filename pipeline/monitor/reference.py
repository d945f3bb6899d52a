"""The reference profile a registered version carries: the test films it was
measured on, profiled (pipeline.monitor.profile), in one JSON file.

Kept per film (the permutation tests need the films, not summaries): its
patient (films of one patient move together in the tests), the scalar
features, the served probability of each finding, and the embedding
projected on its first principal components, fitted on these films. The
projection (mean and components) is stored so that new films land in the
same coordinates. A few thousand films make a file of a few MB.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_json_atomic
from pipeline.monitor.drift import DriftResult, Feature, detect_drift
from pipeline.monitor.profile import SCALAR_FEATURES, FilmProfiles

REFERENCE_FILE = "reference_profile.json"  # reports/evaluate/ and the registered model's artifacts
FORMAT_VERSION = 1
EMBEDDING_COMPONENTS = 16  # principal components kept of the embedding


class ReferenceError(ValueError):
    """A reference profile that is missing or not one this code wrote."""


def principal_components(embeddings: np.ndarray,
                         components: int = EMBEDDING_COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components as rows) of the embeddings, by SVD."""
    mean = embeddings.mean(axis=0)
    _, _, rows = np.linalg.svd(embeddings - mean, full_matrices=False)
    return mean, rows[: min(components, len(embeddings) - 1, embeddings.shape[1])]


def project(embeddings: np.ndarray, embedding: dict) -> np.ndarray:
    return (embeddings - np.asarray(embedding["mean"])) @ np.asarray(embedding["components"]).T


def build_reference(profiles: FilmProfiles, findings: list[str], about: dict) -> dict:
    """The reference document of `profiles` (about: which model, split and data it describes)."""
    if len(profiles.names) < 2:
        raise ReferenceError(f"a reference profile needs at least 2 films, got {len(profiles.names)}")
    embeddings = np.stack(profiles.embeddings)
    mean, components = principal_components(embeddings)
    embedding = {"dimensions": int(embeddings.shape[1]), "mean": mean.round(6).tolist(),
                 "components": components.round(6).tolist()}
    embedding["projected"] = project(embeddings, embedding).round(5).tolist()
    probabilities = np.stack(profiles.probabilities)
    return {
        "format_version": FORMAT_VERSION, **about, "films": len(profiles.names),
        "patients": profiles.patients,
        "features": {name: [row[name] for row in profiles.features] for name, _, _ in SCALAR_FEATURES},
        "probabilities": {f: probabilities[:, i].round(6).tolist() for i, f in enumerate(findings)},
        "embedding": embedding,
        "not_profiled": profiles.failed,
    }


def write_reference(reference: dict, path: Path) -> None:
    write_json_atomic(path, reference)


REFERENCE_KEYS = ("films", "patients", "features", "probabilities", "embedding")


def check_reference(reference, source: str, findings: list[str] | None = None) -> dict:
    """`reference` if it is a profile this code wrote (for `findings`), else ReferenceError naming `source`."""
    if not isinstance(reference, dict) or reference.get("format_version") != FORMAT_VERSION:
        raise ReferenceError(f"{source}: not a reference profile of format {FORMAT_VERSION} "
                             "(written by the evaluate stage as reports/evaluate/reference_profile.json)")
    missing = [key for key in REFERENCE_KEYS if key not in reference]
    if missing:
        raise ReferenceError(f"{source}: the reference profile lacks {', '.join(missing)}")
    if findings is not None and list(reference["probabilities"]) != list(findings):
        raise ReferenceError(f"{source}: the reference profile's findings {list(reference['probabilities'])} are "
                             f"not the model's {list(findings)}")
    return reference


def read_reference(path: Path | str) -> dict:
    try:
        reference = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReferenceError(f"{path}: cannot read the reference profile: {exc}") from exc
    return check_reference(reference, str(path))


def _column(values: list, kind: str) -> np.ndarray:
    if kind == "categorical":
        return np.array([None if v is None else str(v) for v in values], dtype=object)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def compare(reference: dict, profiles: FilmProfiles, findings: list[str], permutations: int, alpha: float,
            seed: int, by_patient: bool = True) -> DriftResult:
    """The new films tested against the reference (pipeline.monitor.drift),
    patient by patient (by_patient=False: film by film, as if each film were
    its own patient; what the benchmark sets beside it)."""
    patients = (reference.get("patients"), profiles.patients) if by_patient else (None, None)
    return detect_drift(drift_features(reference, profiles, findings), permutations, alpha, seed, *patients)


def drift_features(reference: dict, profiles: FilmProfiles, findings: list[str]) -> list[Feature]:
    """Each feature of the reference beside the same feature of the new films."""
    features = [Feature(name, group, kind, _column(reference["features"][name], kind),
                        _column([row[name] for row in profiles.features], kind))
                for name, group, kind in SCALAR_FEATURES]
    probabilities = np.stack(profiles.probabilities)
    features += [Feature(f"p_{f}", "output", "continuous", np.asarray(reference["probabilities"][f], float),
                         probabilities[:, i]) for i, f in enumerate(findings)]
    embedding = reference["embedding"]
    features.append(Feature("embedding", "embedding", "embedding", np.asarray(embedding["projected"], float),
                            project(np.stack(profiles.embeddings), embedding)))
    return features


def probability_shift(reference: dict, profiles: FilmProfiles, findings: list[str]) -> dict[str, dict]:
    """Per finding: the mean served probability of the reference and of the new
    films, their difference and its 95% CI (Welch's normal approximation: the
    films are many, the means nearly normal)."""
    probabilities = np.stack(profiles.probabilities)
    shift = {}
    for i, f in enumerate(findings):
        old, new = np.asarray(reference["probabilities"][f], float), probabilities[:, i]
        difference = float(new.mean() - old.mean())
        se = float(np.sqrt(old.var(ddof=1) / len(old) + new.var(ddof=1) / len(new))) if min(len(old), len(new)) > 1 \
            else float("nan")
        shift[f] = {"reference_mean": round(float(old.mean()), 4), "new_mean": round(float(new.mean()), 4),
                    "difference": round(difference, 4),
                    "ci": [round(difference - 1.959964 * se, 4), round(difference + 1.959964 * se, 4)]}
    return shift
