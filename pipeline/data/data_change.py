"""What changed in the data since the last ingest: the manifest the ingest
stage last wrote (found in DVC's cache by the hash dvc.lock records for it)
against the one it writes now.

Per split: images and patients added and removed (an image that moved split
counts as removed from one and added to the other); over all images: each
finding's prevalence, the share of women, the median age and the share of AP
films, before and after. The ingest stage writes it to
reports/data_change.json, and its totals to metrics/ingest.json, so
`dvc metrics diff` shows them. When there is no earlier manifest (the first
run, or a cache without it, unless the new manifest is byte for byte the one
dvc.lock names) the report says why instead of comparing.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pipeline.core.checksum import file_md5
from pipeline.core.labels import FINDINGS, SPLITS

DVC_CACHE = Path(".dvc") / "cache" / "files" / "md5"


def locked_md5(lock_file: Path, stage: str, out_path: str) -> str | None:
    """The md5 dvc.lock records for `out_path` among `stage`'s outs, None when it records none."""
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    for out in (lock.get("stages", {}).get(stage, {}) or {}).get("outs", []) or []:
        if out.get("path") == out_path:
            return out.get("md5")
    return None


def previous_manifest(lock_file: Path, manifest_path: str, cache: Path = DVC_CACHE) -> tuple[pd.DataFrame | None, str]:
    """The manifest the last ingest wrote and where it came from, or (None, why there is none)."""
    md5 = locked_md5(lock_file, "ingest", manifest_path)
    if md5 is None:
        return None, f"no earlier manifest: {lock_file} records none (the first ingest)"
    cached = cache / md5[:2] / md5[2:]
    written = Path(manifest_path)
    if not cached.is_file() and written.is_file() and file_md5(written) == md5:
        # The manifest this ingest has just written is the one dvc.lock names: nothing changed, and saying so
        # needs no cache (a fresh clone's first run on the committed data reports what the committed run did).
        cached = written
    if not cached.is_file():
        return None, f"the earlier manifest ({md5}) is not in the local DVC cache: `dvc pull` it to compare"
    try:
        return pd.read_csv(cached, dtype={"image_id": str, "patient_id": str}, keep_default_na=False), md5
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return None, f"the earlier manifest ({md5}) cannot be read: {exc}"


def added_images(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, list[str]]:
    """Per split, the image ids new to it, sorted (what `make retrain` monitors, its pull request names)."""
    return {split: sorted(set(after.loc[after["split"] == split, "image_id"])
                          - set(before.loc[before["split"] == split, "image_id"])) for split in SPLITS}


def split_changes(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per split, images and patients added and removed."""
    changes = {}
    for split in SPLITS:
        old, new = before[before["split"] == split], after[after["split"] == split]
        old_images, new_images = set(old["image_id"]), set(new["image_id"])
        old_patients, new_patients = set(old["patient_id"].astype(str)), set(new["patient_id"].astype(str))
        changes[split] = {"images_added": len(new_images - old_images), "images_removed": len(old_images - new_images),
                          "patients_added": len(new_patients - old_patients),
                          "patients_removed": len(old_patients - new_patients)}
    return changes


def profile(manifest: pd.DataFrame) -> dict:
    """Prevalence per finding and the demographics of a manifest's images."""
    ages = pd.to_numeric(manifest["age"], errors="coerce")
    ages = ages[(ages >= 0) & (ages <= 120)]
    count = len(manifest)
    return {
        "images": count,
        "patients": int(manifest["patient_id"].astype(str).nunique()),
        "prevalence": {f: (float(pd.to_numeric(manifest[f]).mean()) if count else None) for f in FINDINGS},
        "female_share": float((manifest["sex"].astype(str).str.upper() == "F").mean()) if count else None,
        "median_age": float(ages.median()) if len(ages) else None,
        "ap_share": float((manifest["view"].astype(str).str.upper() == "AP").mean()) if count else None,
    }


def data_change(before: pd.DataFrame | None, after: pd.DataFrame, source: str) -> dict:
    """The report: {"compared_with", "splits", "before", "after", "totals", "added"}; without
    `before`, "compared_with" is None and "reason" says why (`source`)."""
    if before is None:
        return {"compared_with": None, "reason": source, "after": profile(after)}
    splits = split_changes(before, after)
    totals = {key: sum(split[key] for split in splits.values())
              for key in ("images_added", "images_removed", "patients_added", "patients_removed")}
    return {"compared_with": source, "splits": splits, "totals": totals, "before": profile(before),
            "after": profile(after), "added": added_images(before, after)}


def change_metrics(report: dict) -> dict:
    """The scalar figures for metrics/ingest.json (what `dvc metrics diff` compares); none without a comparison."""
    return dict(report.get("totals", {}))


def change_lines(report: dict) -> list[str]:
    """The report as a person reads it at the end of the stage."""
    if report["compared_with"] is None:
        return [report["reason"]]
    totals, before, after = report["totals"], report["before"], report["after"]
    lines = [f"since the last ingest: {totals['images_added']} images added, {totals['images_removed']} removed "
             f"({totals['patients_added']} patients added, {totals['patients_removed']} removed)"]
    moved = [f"{f} {before['prevalence'][f]:.3f} -> {after['prevalence'][f]:.3f}" for f in FINDINGS
             if before["prevalence"][f] is not None and after["prevalence"][f] is not None
             and abs(after["prevalence"][f] - before["prevalence"][f]) >= 0.005]
    if moved:
        lines.append("prevalence changed: " + ", ".join(moved))
    return lines
