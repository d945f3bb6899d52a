"""Does a known artefact move the model? A counterfactual check a team runs
for an artefact it suspects (a chest drain, a marker, a line).

Each film is scored twice, as it is and with the artefact drawn onto it (on
the original film, before it is brought to the model's input), and for every
finding the change in its served probability is averaged over the films that
lack that finding: the artefact carries no sign of it, so a rise says the
model reads the artefact as the finding. The 95% interval is a percentile
bootstrap over patients (pipeline.core.bootstrap); a finding is flagged
raised (or lowered) when its interval at the Bonferroni level over the
findings tested (1 - 0.05 / k) lies wholly above (below) 0, so a model the
artefact does not move gets a flag with chance at most 5% in all. Fewer than
`min_films` films without the finding give no figure, only the reason.

What it does not say: a model may answer any bright foreign object with a
rise in findings that look bright. In the hidden-strata benchmark
(benchmarks/RESULTS.md), a drawn drain raises pneumothorax by +0.45 to +0.54
in small_cnn models trained with a planted drain and by +0.10 to +0.28 in
models trained without one (docs/evaluation.md#a-known-artefact). Compare
findings, and models, with it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from pipeline.core.bootstrap import CONFIDENCE, patient_resample_counts, percentile_interval
from pipeline.phantom.render import draw_drain
from pipeline.records.film import model_input

# Artefact drawers: (8-bit film, seed, film index) -> the film with the
# artefact, drawn in place. A new artefact is a function added here.
ARTEFACTS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {"drain": draw_drain}
ALPHA = 1 - CONFIDENCE
MIN_FILMS = 10


def artefact_probabilities(model, films: Iterable[np.ndarray], artefact: str, seed: int, batch_size: int = 32,
                           patients: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(served probabilities of the 8-bit films as they are, with the artefact
    drawn): two (n, 14) arrays. `model`: a pipeline.serve.api.XrayModel;
    `patients`: the encoded patient inputs of a model that takes them. The
    films are read once, one at a time (only the model-size inputs are kept)."""
    if artefact not in ARTEFACTS:
        raise ValueError(f"unknown artefact {artefact!r}; known: {', '.join(ARTEFACTS)}")
    draw = ARTEFACTS[artefact]
    plain, drawn = [], []
    for i, film in enumerate(films):
        plain.append(model_input(film, model.image_size, model.fit))
        drawn.append(model_input(draw(film.copy(), seed, i), model.image_size, model.fit))
    if not plain:
        return np.zeros((0, len(model.findings))), np.zeros((0, len(model.findings)))
    return (np.asarray(model.predict(np.stack(plain), patients, batch_size=batch_size), np.float64),
            np.asarray(model.predict(np.stack(drawn), patients, batch_size=batch_size), np.float64))


def artefact_effect(without: np.ndarray, with_artefact: np.ndarray, labels: np.ndarray, patients: Sequence,
                    findings: Sequence[str], resamples: int = 1000, seed: int = 0,
                    min_films: int = MIN_FILMS) -> dict:
    """Per finding: the mean change in probability over the films lacking it,
    its 95% interval, and whether the artefact raises or lowers it at the
    family-wise level (module notes)."""
    change = np.asarray(with_artefact, float) - np.asarray(without, float)
    lacking = np.asarray(labels) == 0  # (films, findings): the films each finding's mean is over
    testable = [i for i in range(len(findings)) if lacking[:, i].sum() >= min_films]
    level = 1 - ALPHA / max(1, len(testable))
    # every finding's resampled mean at once: weighted sums over the films lacking it
    sums, weights = [], []
    for counts in patient_resample_counts(patients, resamples, seed):
        sums.append(counts @ (change * lacking))
        weights.append(counts @ lacking)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.concatenate(sums) / np.concatenate(weights) if sums else np.zeros((0, len(findings)))
    report = {}
    for i, finding in enumerate(findings):
        films = int(lacking[:, i].sum())
        if i not in testable:
            report[finding] = {"films": films, "mean_change": None,
                               "reason": f"too few films without it (n={films}; at least {min_films})"}
            continue
        low, high = percentile_interval(means[:, i])
        flag_low, flag_high = percentile_interval(means[:, i], level)
        report[finding] = {"films": films, "mean_change": round(float(change[lacking[:, i], i].mean()), 4),
                           "ci": [round(low, 4), round(high, 4)], "raised": bool(flag_low > 0),
                           "lowered": bool(flag_high < 0)}
    return {"findings_tested": len(testable), "flag_level": round(level, 5), "resamples": resamples,
            "by_finding": report}
