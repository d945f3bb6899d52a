"""Benchmark: the validate stage's Great Expectations suite on a full-size manifest.

Builds the manifest NIH's full release would give (all 112,120 rows of the
real Data_Entry_2017_v2020.csv.gz, splits assigned by the stratified
patient-wise split, a synthetic path column: no images needed), then times
validate_manifest on it: the first call (Great Expectations' import and
context set-up included), then --repeat steady-state calls, with mean and
the slowest next to the median. Target: under 10 s, first call and slowest
steady call alike.

    .venv/bin/python benchmarks/bench_validate.py [--repeat 3] [--csv PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import pandas as pd
from common import add_output_arguments, describe, report, timed

from pipeline.data.ingest import label_matrix
from pipeline.data.manifest import MANIFEST_COLUMNS, MANIFEST_DTYPES
from pipeline.data.nih import read_data_entry
from pipeline.data.split import assign_patient_splits

DEFAULT_CSV = PROJECT_ROOT.parent / "shared" / "data" / "nih-subset" / "Data_Entry_2017_v2020.csv.gz"
TARGET_S = 10.0
SECTION = "bench_validate"
RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def full_manifest(csv: Path, seed: int = 42) -> pd.DataFrame:
    """The manifest for every row of `csv`, as ingest would write it if every image were on disk."""
    metadata = read_data_entry(csv)
    labels = label_matrix(metadata, csv)
    manifest = pd.concat([metadata, labels], axis=1)
    manifest["path"] = "data/nih/images/" + manifest["image_id"]
    manifest["split"] = assign_patient_splits(manifest["patient_id"], RATIOS, seed, labels)
    return manifest[list(MANIFEST_COLUMNS)].astype(MANIFEST_DTYPES).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the first (default 3)")
    add_output_arguments(parser)
    args = parser.parse_args()
    if not args.csv.is_file():
        sys.exit(f"bench_validate: {args.csv} not found (the real NIH CSV lives in ../shared/data/nih-subset)")

    from pipeline.data.validate import validate_manifest

    manifest, build_s = timed(full_manifest, args.csv)
    result, first_s = timed(validate_manifest, manifest)  # includes GX import and context set-up
    if not result.success:
        sys.exit(f"bench_validate: the full manifest unexpectedly failed validation: {result.failed[:3]}")
    runs = [timed(validate_manifest, manifest)[1] for _ in range(args.repeat)]
    slowest = max([first_s, *runs])
    verdict = "meets" if slowest < TARGET_S else "MISSES"
    lines = [
        f"validate_manifest on {len(manifest):,} rows x {len(manifest.columns)} columns "
        f"({manifest['patient_id'].nunique():,} patients), {len(result.checks)} checks, "
        f"{len(result.warnings)} warnings:",
        f"  first call (GX import + context set-up + run): {first_s:.2f} s",
        *([f"  steady state: {describe(runs, 's', 1, 2)}"] if runs else []),
        f"  building the manifest from the CSV (read, labels, split): {build_s:.2f} s",
        f"  target < {TARGET_S:.0f} s (slowest call, {slowest:.2f} s): {verdict}",
    ]
    report(args, SECTION, "bench_validate: the manifest suite on all 112,120 NIH rows", lines)


if __name__ == "__main__":
    main()
