"""Benchmark: the evaluate stage's figures on a full-size NIH test set.

25,000 synthetic test images x 14 findings at NIH-like prevalences (5
films a patient; NIH's test split has about 9), scores from a model of AUC
~0.8. Side by side, taking turns for --rounds rounds
(order rotated each round):
  (a) our evaluation_metrics: thresholds, AUC, AUPRC, operating points and
      vectorised patient-bootstrap CIs over --resamples resamples;
  (b) a naive baseline: the same patient resamples expanded to film indices
      and a Python loop of sklearn roc_auc_score calls per resample and
      finding, timed on --naive resamples and extrapolated (the loop's cost
      is linear in the resamples).
Mean and the slowest round next to the median. Target: (a) under 10 s.

    .venv/bin/python benchmarks/bench_evaluate.py [--images 25000] [--resamples 1000] [--naive 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import add_output_arguments, contention_line, describe, interleaved, report, summary, timed
from sklearn.metrics import roc_auc_score

from pipeline.core.bootstrap import patient_resample_counts
from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import evaluation_metrics

SECTION = "bench_evaluate"
TARGET_S = 10.0
# NIH ChestX-ray14 prevalences (share of images with the finding), FINDINGS order.
PREVALENCE = (0.103, 0.025, 0.042, 0.021, 0.119, 0.022, 0.015, 0.002, 0.177, 0.052, 0.056, 0.030, 0.013, 0.047)


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels at NIH prevalences; scores a logistic of a 1.2-sigma class shift (AUC ~0.8)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(FINDINGS))) < np.array(PREVALENCE)).astype(np.int64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.2 * labels - 2.0)))
    return labels, probs


def naive_bootstrap(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, resamples: int,
                    seed: int) -> np.ndarray:
    """The baseline: the same patient resamples as films, one sklearn call per resample and finding."""
    rows = []
    films = np.arange(len(labels))
    for counts in patient_resample_counts(patients, resamples, seed):
        for weights in counts:
            indices = np.repeat(films, weights)
            rows.append([roc_auc_score(labels[indices, i], probs[indices, i]) for i in range(labels.shape[1])])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=20, help="resamples timed for the sklearn loop")
    parser.add_argument("--rounds", type=int, default=3)
    add_output_arguments(parser)
    args = parser.parse_args()
    val, test = synthetic_split(args.images, 1), synthetic_split(args.images, 2)
    patients = np.arange(args.images) // 5
    metrics = {}

    def ours() -> float:
        result, seconds = timed(evaluation_metrics, val, test, "youden", resamples=args.resamples, seed=0,
                                test_patients=patients)
        metrics.update(result)
        return seconds

    def naive() -> float:
        return timed(naive_bootstrap, *test, patients, args.naive, 0)[1] * args.resamples / args.naive

    busy: dict[str, list[float]] = {}
    rounds = interleaved({"ours": ours, "naive": naive}, args.rounds, log=SECTION, contention=busy)
    mean = {name: summary(values)["mean"] for name, values in rounds.items()}
    per_round = ", ".join(f"{n / o:.0f}" for o, n in zip(rounds["ours"], rounds["naive"]))
    low, high = metrics["mean_auc_ci"]
    lines = [
        f"test set: {args.images:,} images x {len(FINDINGS)} findings, {args.resamples:,} bootstrap resamples, "
        f"{args.rounds} interleaved rounds; seconds",
        f"(a) evaluation_metrics (all figures, vectorised bootstrap): {describe(rounds['ours'], 's', 1, 2)}",
        f"(b) sklearn roc_auc_score loop, {args.naive} resamples timed, extrapolated to {args.resamples:,}: "
        f"{describe(rounds['naive'], 's', 1, 1)}",
        f"(b) / (a) on the means: {mean['naive'] / mean['ours']:.0f} x (per round {per_round}); "
        f"slowest (b) / slowest (a): {max(rounds['naive']) / max(rounds['ours']):.0f} x",
        contention_line(busy),
        f"mean AUC {metrics['mean_auc']:.4f}, 95% CI {low:.4f}-{high:.4f}",
        f"target (a) < {TARGET_S:.0f} s, slowest round: {'meets' if max(rounds['ours']) < TARGET_S else 'MISSES'}",
    ]
    report(args, SECTION, "bench_evaluate: bootstrap AUC confidence intervals on a full-size test set", lines)


if __name__ == "__main__":
    main()
