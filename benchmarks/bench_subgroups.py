"""Benchmark: the subgroup report (pipeline.model.subgroups) on a full-size NIH test split.

The official NIH test split: 25,596 images of 2,797 patients. With ../shared
present, its real labels, patient ids, ages, sexes and views (test_list.txt
joined to Data_Entry_2017_v2020.csv.gz); without it, a synthetic split of that
size at NIH prevalences and demographics. Scores: a model of AUC ~0.8 (a
logistic of a 1.2-sigma class shift, as bench_evaluate). Times subgroup_report
(19 slices x 14 findings, --resamples patient resamples per slice, gaps) over
--repeat runs. Target: under 60 s on 2 cores. Prints the numbers and writes
them into RESULTS.md (its bench_subgroups section).

    .venv/bin/python benchmarks/bench_subgroups.py [--resamples 1000] [--repeat 3] [--synthetic]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from bench_evaluate import PREVALENCE
from common import add_output_arguments, report, timed

from pipeline.core.labels import FINDINGS, parse_finding_labels
from pipeline.model.subgroups import subgroup_report

SECTION = "bench_subgroups"
TARGET_S = 60.0
NIH_SUBSET = PROJECT_ROOT.parent / "shared" / "data" / "nih-subset"
# The official NIH test split's size.
TEST_IMAGES, TEST_PATIENTS = 25_596, 2_797
THRESHOLD = 0.3  # every finding's operating threshold for the simulated scores


def real_test_split() -> dict:
    """Labels and demographics of NIH's official test split, from ../shared."""
    from pipeline.data.nih import read_data_entry, read_image_list

    metadata = read_data_entry(NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz").set_index("image_id")
    test = metadata.loc[read_image_list(NIH_SUBSET / "test_list.txt")]
    return {"labels": np.array([parse_finding_labels(t) for t in test["finding_labels"]], dtype=np.int64),
            "patients": test["patient_id"].to_numpy(), "ages": test["age"].to_numpy(dtype=float),
            "sexes": test["sex"].to_numpy(), "views": test["view"].to_numpy(),
            "source": "NIH official test split (real labels and demographics from ../shared)"}


def synthetic_test_split(seed: int = 0) -> dict:
    """TEST_IMAGES films of TEST_PATIENTS patients: NIH prevalences, 56% men,
    ages ~ N(47, 17) per patient (a few missing), 60% PA films."""
    rng = np.random.default_rng(seed)
    patients = np.sort(rng.integers(0, TEST_PATIENTS, TEST_IMAGES))
    ages = np.clip(rng.normal(47, 17, TEST_PATIENTS), 1, 95).round()[patients]
    ages[rng.random(TEST_IMAGES) < 0.001] = np.nan
    return {"labels": (rng.random((TEST_IMAGES, len(FINDINGS))) < np.array(PREVALENCE)).astype(np.int64),
            "patients": patients, "ages": ages,
            "sexes": np.where(rng.random(TEST_PATIENTS) < 0.56, "M", "F")[patients],
            "views": np.where(rng.random(TEST_IMAGES) < 0.6, "PA", "AP"),
            "source": "synthetic split of the official test split's size"}


def simulated_scores(labels: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.2 * labels - 2.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="simulate the split even when ../shared is there")
    add_output_arguments(parser)
    args = parser.parse_args()
    real = not args.synthetic and (NIH_SUBSET / "test_list.txt").is_file()
    split = real_test_split() if real else synthetic_test_split()
    labels, scores = split["labels"], simulated_scores(split["labels"])
    people = {"patient_id": split["patients"], "age": split["ages"], "sex": split["sexes"], "view": split["views"]}
    inputs = (labels, scores, [THRESHOLD] * len(FINDINGS), people)
    seconds = []
    for _ in range(args.repeat):
        result, took = timed(subgroup_report, *inputs, resamples=args.resamples, seed=0)
        seconds.append(took)
    flagged = [f"{g['attribute']} {g['metric']}" for g in result["gaps"] if g["flagged"]]
    female = result["sex"]["F"]
    lines = [
        f"test set: {len(labels):,} images of {len(set(split['patients'])):,} patients ({split['source']})",
        f"subgroup_report: 19 slices x {len(FINDINGS)} findings, {args.resamples:,} patient resamples per slice",
        f"  {args.repeat} runs: mean {np.mean(seconds):6.2f} s, max {max(seconds):6.2f} s "
        f"(target < {TARGET_S:.0f} s: {'met' if max(seconds) < TARGET_S else 'MISSED'})",
        f"sex F: {female['n']:,} images, mean AUC {female['mean_auc']}, 95% CI {female['mean_auc_ci']}, "
        f"underdiagnosis {female['underdiagnosis_rate']}",
        f"gaps flagged: {', '.join(flagged) or 'none'}",
    ]
    report(args, SECTION, "Subgroups: slice AUCs, underdiagnosis and gaps with patient bootstrap CIs", lines)


if __name__ == "__main__":
    main()
