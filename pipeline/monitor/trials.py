"""How well the monitor sees a drift of known size: batches that mix films of
another site (or any shifted pool) into films like the reference's at set
shares, each batch tested against the reference. What the drift benchmark
and its slow test run; a team can run it on its own two pools to learn what
share its batch size can see.

The films of each pool are profiled once (pipeline.monitor.profile); a batch
is a sample of those profiles, without replacement within the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.monitor.profile import FilmProfiles
from pipeline.monitor.reference import compare


def subset(profiles: FilmProfiles, rows) -> FilmProfiles:
    return FilmProfiles([profiles.names[i] for i in rows], [profiles.features[i] for i in rows],
                        [profiles.probabilities[i] for i in rows], [profiles.embeddings[i] for i in rows],
                        [profiles.patients[i] for i in rows])


def concatenated(first: FilmProfiles, second: FilmProfiles) -> FilmProfiles:
    return FilmProfiles(first.names + second.names, first.features + second.features,
                        first.probabilities + second.probabilities, first.embeddings + second.embeddings,
                        first.patients + second.patients)


def mixed_batch(clean: FilmProfiles, shifted: FilmProfiles, share: float, size: int,
                rng: np.random.Generator) -> FilmProfiles:
    """`size` films, round(share x size) of them from `shifted`, the rest from `clean`."""
    n_shifted = int(round(share * size))
    return concatenated(subset(clean, rng.choice(len(clean.names), size - n_shifted, replace=False)),
                        subset(shifted, rng.choice(len(shifted.names), n_shifted, replace=False)))


@dataclass(frozen=True)
class Trial:
    share: float
    seed: int
    score: float
    drift: bool


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def run_trials(reference: dict, clean: FilmProfiles, shifted: FilmProfiles, findings: list[str],
               shares: list[float], seeds: list[int], batch_size: int, permutations: int,
               alpha: float = 0.05, by_patient: bool = True) -> list[Trial]:
    """One batch per (share, seed), tested against `reference` (by_patient: see reference.compare)."""
    trials = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for share in shares:
            batch = mixed_batch(clean, shifted, share, batch_size, rng)
            result = compare(reference, batch, findings, permutations, alpha, seed, by_patient)
            trials.append(Trial(share, seed, result.score, result.verdict == "drift"))
    return trials


def trial_summary(trials: list[Trial]) -> dict:
    """Per share: batches, share flagged and mean score; and Spearman's rho of
    score against share within each seed, averaged over the seeds."""
    shares = sorted({t.share for t in trials})
    seeds = sorted({t.seed for t in trials})
    per_share = {}
    for share in shares:
        these = [t for t in trials if t.share == share]
        per_share[share] = {"batches": len(these), "flagged": sum(t.drift for t in these),
                            "detection": sum(t.drift for t in these) / len(these),
                            "mean_score": float(np.mean([t.score for t in these]))}
    rhos = []
    for seed in seeds:
        these = sorted((t for t in trials if t.seed == seed), key=lambda t: t.share)
        if len({t.share for t in these}) > 2:
            rhos.append(spearman([t.share for t in these], [t.score for t in these]))
    return {"per_share": per_share, "spearman_by_seed": rhos,
            "spearman_mean": float(np.mean(rhos)) if rhos else None}
