"""Benchmark: the evaluate stage's figures on a full-size NIH test set.

25,000 synthetic test images x 14 findings at NIH-like prevalences, scores
from a model of AUC ~0.8. Side by side in one run:
  (a) our evaluation_metrics: thresholds, AUC, AUPRC, operating points and
      vectorised bootstrap CIs over --resamples resamples;
  (b) a naive baseline: a Python loop of sklearn roc_auc_score calls per
      resample and finding, timed on --naive resamples and extrapolated.
Target: (a) in seconds. Prints the numbers and writes them into RESULTS.md
(its bench_evaluate section).

    .venv/bin/python benchmarks/bench_evaluate.py [--images 25000] [--resamples 1000] [--naive 20]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import add_output_arguments, report, timed
from sklearn.metrics import roc_auc_score

from pipeline.core.labels import FINDINGS
from pipeline.model.metrics import bootstrap_indices, evaluation_metrics

SECTION = "bench_evaluate"
# NIH ChestX-ray14 prevalences (share of images with the finding), FINDINGS order.
PREVALENCE = (0.103, 0.025, 0.042, 0.021, 0.119, 0.022, 0.015, 0.002, 0.177, 0.052, 0.056, 0.030, 0.013, 0.047)


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels at NIH prevalences; scores a logistic of a 1.2-sigma class shift (AUC ~0.8)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(FINDINGS))) < np.array(PREVALENCE)).astype(np.int64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.2 * labels - 2.0)))
    return labels, probs


def naive_bootstrap(labels: np.ndarray, probs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The baseline: one sklearn call per resample and finding."""
    rows = []
    for indices in np.concatenate(list(bootstrap_indices(len(labels), resamples, seed))):
        rows.append([roc_auc_score(labels[indices, i], probs[indices, i]) for i in range(labels.shape[1])])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=20, help="resamples timed for the sklearn loop")
    add_output_arguments(parser)
    args = parser.parse_args()
    val, test = synthetic_split(args.images, 1), synthetic_split(args.images, 2)
    metrics, ours = timed(evaluation_metrics, val, test, "youden", resamples=args.resamples, seed=0)
    _, naive = timed(naive_bootstrap, *test, args.naive, 0)
    naive_full = naive * args.resamples / args.naive
    low, high = metrics["mean_auc_ci"]
    lines = [
        f"test set: {args.images:,} images x {len(FINDINGS)} findings, {args.resamples:,} bootstrap resamples",
        f"(a) evaluation_metrics (all figures, vectorised bootstrap): {ours:8.2f} s",
        f"(b) sklearn roc_auc_score loop, {args.naive} resamples:        {naive:8.2f} s",
        f"    extrapolated to {args.resamples:,} resamples:               {naive_full:8.2f} s"
        f"  ({naive_full / ours:.0f}x (a))",
        f"mean AUC {metrics['mean_auc']:.4f}, 95% CI {low:.4f}-{high:.4f}",
    ]
    report(args, SECTION, "Evaluate: bootstrap AUC confidence intervals", lines)


if __name__ == "__main__":
    main()
