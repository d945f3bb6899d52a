"""Does a known artefact move the model? A counterfactual check a team runs
for an artefact it suspects (a chest drain, a marker, a line).

Each film is scored twice, as it is and with the artefact drawn onto it (on
the original film, before it is brought to the model's input), and for every
finding the change in its served probability is averaged over the films that
lack that finding: the artefact carries no sign of it, so a rise says the
model reads the artefact as the finding. Per finding, the change is summed
over each patient's films lacking it (a patient's films move together), and:
  - the 95% interval is the patient-clustered t interval of the ratio mean
    (linearised variance with the P/(P-1) small-sample factor, P - 1 degrees
    of freedom);
  - raised or lowered is a sign-flip permutation test over all findings at
    once (Westfall and Young's maxT): each patient's changes flipped
    together at random, every finding's t recomputed, and a finding flagged
    when its adjusted p <= 0.05, so an artefact that does not move the model
    flags one with chance at most 5% per check, whatever the number of films
    (exact when a patient's change is as likely to be +x as -x).
A percentile bootstrap at the Bonferroni level, used first, flagged 18% of
null checks on 40 films and 7.5% on 300 (the simulation of
tests/model/test_artefact_check.py): its tails are too thin. Fewer than
`min_films` films, or 2 patients, without the finding give no figure, only
the reason.

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
import pandas as pd
from scipy import stats

from pipeline.core.bootstrap import CONFIDENCE
from pipeline.phantom.render import draw_drain
from pipeline.records.film import model_input

# Artefact drawers: (8-bit film, seed, film index) -> the film with the
# artefact, drawn in place. A new artefact is a function added here.
ARTEFACTS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {"drain": draw_drain}
ALPHA = 1 - CONFIDENCE
MIN_FILMS = 10
FLIP_BLOCK = 100  # sign flips per block: (flips, patients, findings) floats in memory at once


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


def patient_sums(change: np.ndarray, lacking: np.ndarray, patients: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(per patient and finding, the summed change over its films lacking the
    finding; how many such films): two (patients, findings) arrays."""
    codes, _ = pd.factorize(pd.Series(list(patients), dtype=object))
    sums = np.zeros((codes.max() + 1 if len(codes) else 0, change.shape[1]))
    films = np.zeros_like(sums)
    np.add.at(sums, codes, change * lacking)
    np.add.at(films, codes, lacking)
    return sums, films


def clustered_t(sums: np.ndarray, films: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ratio mean, its patient-clustered standard error, patients counted) per
    finding, over the last two axes (..., patients, findings)."""
    total = films.sum(axis=-2)
    patients = (films > 0).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums.sum(axis=-2) / total
        residual = sums - mean[..., None, :] * films
        variance = patients / (patients - 1) * (residual ** 2).sum(axis=-2) / total ** 2
    return mean, np.sqrt(variance), patients


def artefact_effect(without: np.ndarray, with_artefact: np.ndarray, labels: np.ndarray, patients: Sequence,
                    findings: Sequence[str], flips: int = 1000, seed: int = 0, min_films: int = MIN_FILMS) -> dict:
    """Per finding: the mean change in probability over the films lacking it,
    its 95% interval, the adjusted p and whether the artefact raises or lowers
    it (module notes)."""
    change = np.asarray(with_artefact, float) - np.asarray(without, float)
    lacking = np.asarray(labels) == 0  # (films, findings): the films each finding's mean is over
    sums, films = patient_sums(change, lacking, patients)
    mean, error, counted = clustered_t(sums, films)
    testable = [i for i in range(len(findings)) if lacking[:, i].sum() >= min_films and counted[i] >= 2]
    observed = np.abs(mean[testable] / error[testable])
    # sign flips of whole patients: the largest |t| over the findings tested, per flip
    rng = np.random.default_rng(seed)
    largest = []
    for start in range(0, flips if testable else 0, FLIP_BLOCK):
        signs = rng.choice([-1.0, 1.0], (min(FLIP_BLOCK, flips - start), len(sums), 1))
        flipped_mean, flipped_error, _ = clustered_t(signs * sums[:, testable], films[:, testable])
        largest.append(np.nan_to_num(np.abs(flipped_mean / flipped_error), nan=0.0).max(axis=-1))
    reference = np.concatenate(largest) if largest else np.zeros(0)
    report = {}
    for i, finding in enumerate(findings):
        entry = {"films": int(lacking[:, i].sum()), "patients": int(counted[i])}
        if i not in testable:
            report[finding] = {**entry, "mean_change": None,
                               "reason": f"too few films without it (n={entry['films']} of {entry['patients']} "
                                         f"patients; at least {min_films} films of 2)"}
            continue
        statistic = observed[testable.index(i)]
        p_value = float((1 + int((reference >= statistic - 1e-12).sum())) / (1 + len(reference)))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, counted[i] - 1) * error[i])
        flagged = p_value <= ALPHA
        report[finding] = {**entry, "mean_change": round(float(mean[i]), 4),
                           "ci": [round(float(mean[i]) - half, 4), round(float(mean[i]) + half, 4)],
                           "p_value": round(p_value, 4), "raised": bool(flagged and mean[i] > 0),
                           "lowered": bool(flagged and mean[i] < 0)}
    return {"findings_tested": len(testable), "flag_level": ALPHA, "flips": flips,
            "test": "sign flips of each patient's changes, maxT over the findings tested", "by_finding": report}
