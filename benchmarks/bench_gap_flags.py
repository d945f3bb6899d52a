"""Benchmark: how often the subgroup gap flag fires when there is no gap.

A null simulation: --runs test sets of 10 sex x age slices with --patients
patients each (1 to 9 films a patient, mean 5), every slice drawn from the
same distribution, so any flagged sex x age gap is a false alarm; the nominal
family-wise rate is 5%. Side by side on the same sets:
  (a) ours: pipeline.model.subgroups' permutation test of the family's largest gap;
  (b) the rule it replaced: the pair's difference +- z x the bootstrap standard
      error at Bonferroni's level over the 45 pairs (z = 3.26), and for the
      underdiagnosis rate also Newcombe's score interval excluding 0.
Each with a 95% binomial (Wilson) interval of the rate. Target: (a) at most 5.5%.

    .venv/bin/python benchmarks/bench_gap_flags.py [--runs 1000] [--patients 30] [--permutations 1000]
"""
from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import NormalDist

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import add_output_arguments, cores, report, timed

from pipeline.core.labels import FINDINGS
from pipeline.model.gap_test import AttributeFilms
from pipeline.model.subgroups import (
    AGE_BANDS,
    attribute_gaps,
    evaluate_slice,
    missed_and_ill,
    slice_masks,
)

SECTION = "bench_gap_flags"
TARGET_RATE = 0.055
THRESHOLD = 0.5
N_FINDINGS = len(FINDINGS)


def null_test_set(patients_per_slice: int, seed: int):
    """Every sex x age slice alike: (labels, scores, patients, ages, sexes)."""
    rng = np.random.default_rng(seed)
    slices = [(sex, low) for sex in ("F", "M") for _, low, _ in AGE_BANDS]
    patients = patients_per_slice * len(slices)
    sex = np.array([s for s, _ in slices for _ in range(patients_per_slice)])
    age = np.array([low + 5.0 for _, low in slices for _ in range(patients_per_slice)])
    films = rng.integers(1, 10, patients)
    of = np.repeat(np.arange(patients), films)
    ill = rng.random((patients, N_FINDINGS)) < 0.2
    score = rng.normal(size=(patients, N_FINDINGS)) + 1.5 * ill
    scores = 1 / (1 + np.exp(-(score[of] + 0.5 * rng.normal(size=(len(of), N_FINDINGS)) - 1.0)))
    return ill[of].astype(int), scores, of, age[of], sex[of]


def old_rule(figures: dict, draws: dict, gap: dict) -> bool:
    """The replaced flag: Bonferroni z x bootstrap SD; Newcombe's interval too for rates."""
    if gap["difference"] is None:
        return False
    metric = gap["metric"]
    # its own pair: the highest and the lowest slice
    values = {name: fig[metric] for name, fig in figures.items() if fig[metric] is not None}
    low, high = min(values, key=values.get), max(values, key=values.get)
    difference = values[high] - values[low]
    pairs = gap["slices_compared"] * (gap["slices_compared"] - 1) // 2
    confidence = 1 - 0.05 / pairs
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = draws[high][metric] - draws[low][metric]
    spread = spread[~np.isnan(spread)]
    if len(spread) < 2:
        return False
    half = z * float(np.std(spread, ddof=1))
    flagged = difference - half > 0
    if metric == "underdiagnosis_rate":
        n1, n2 = figures[high]["ill_images"], figures[low]["ill_images"]
        p1, p2 = figures[high][metric], figures[low][metric]
        (l1, _), (_, h2) = wilson(p1, n1, z), wilson(p2, n2, z)
        flagged = flagged and (p1 - p2) - math.sqrt((p1 - l1) ** 2 + (h2 - p2) ** 2) > 0
    return flagged


def wilson(p: float, n: int, z: float) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def one_run(job: tuple[int, int, int, int]) -> dict[str, tuple[bool, bool]]:
    """{metric: (ours flagged, old rule flagged)} for one null test set."""
    seed, patients, resamples, permutations = job
    labels, scores, patient_ids, ages, sexes = null_test_set(patients, seed)
    cutoffs = np.full(N_FINDINGS, THRESHOLD)
    missed, ill = missed_and_ill(labels, scores, cutoffs)
    masks = slice_masks({"age": ages, "sex": sexes}, ["sex_age"])["sex_age"]
    figures, draws = {}, {}
    slice_of = np.full(len(labels), "", dtype=object)
    for name, mask in masks.items():
        slice_of[mask] = name
        figures[name], draws[name] = evaluate_slice(labels[mask], scores[mask], cutoffs, patient_ids[mask], 10,
                                                    resamples, seed * 100 + len(figures))
    films = AttributeFilms(labels, scores, missed, ill, slice_of, patient_ids)
    gaps = attribute_gaps("sex_age", figures, draws, films, permutations, seed)
    return {gap["metric"]: (gap["flagged"], old_rule(figures, draws, gap)) for gap in gaps}


def rate_line(label: str, hits: int, runs: int) -> str:
    low, high = (max(bound, 0.0) for bound in wilson(hits / runs, runs, 1.96))
    return f"{label}: {hits} of {runs} = {hits / runs:.1%} (95% CI {low:.1%}-{high:.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=30, help="patients per sex x age slice")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per slice (old rule)")
    parser.add_argument("--permutations", type=int, default=1000, help="shuffles of the gap test (ours)")
    add_output_arguments(parser)
    args = parser.parse_args()
    jobs = [(seed, args.patients, args.resamples, args.permutations) for seed in range(args.runs)]
    with ProcessPoolExecutor(max_workers=cores()) as pool:
        results, seconds = timed(lambda: list(pool.map(one_run, jobs, chunksize=10)))
    lines = [f"{args.runs} null test sets: 10 sex x age slices of {args.patients} patients (1-9 films each, "
             f"mean 5), no true gap; {args.permutations} shuffles, {args.resamples} bootstrap resamples; "
             f"{seconds:.0f} s on {cores()} cores"]
    for metric in ("underdiagnosis_rate", "mean_auc"):
        ours = sum(r[metric][0] for r in results)
        old = sum(r[metric][1] for r in results)
        lines += [rate_line(f"{metric} gap flagged, (a) permutation test (ours)", ours, args.runs),
                  rate_line(f"{metric} gap flagged, (b) Bonferroni z = 3.26 (replaced)", old, args.runs)]
    either = sum(r["underdiagnosis_rate"][0] or r["mean_auc"][0] for r in results)
    lines.append(rate_line("either sex x age gap flagged, (a)", either, args.runs))
    worst = max(sum(r[m][0] for r in results) for m in ("underdiagnosis_rate", "mean_auc")) / args.runs
    lines.append(f"target: each gap's false-flag rate at most {TARGET_RATE:.1%}: "
                 f"{'met' if worst <= TARGET_RATE else 'MISSED'}")
    report(args, SECTION, "Gap flags under no true gap: false-alarm rate of the sex x age flag", lines)


if __name__ == "__main__":
    main()
