"""What changed since the last ingest (pipeline.data.data_change): two
manifests compared per split, and the earlier one found through dvc.lock in
DVC's cache, or the reason it cannot be."""
from __future__ import annotations

import hashlib

import pandas as pd
import pytest
import yaml

from pipeline.core.labels import FINDINGS
from pipeline.data.data_change import change_lines, change_metrics, data_change, previous_manifest


def manifest(rows: list[tuple]) -> pd.DataFrame:
    """rows of (image_id, patient_id, split, sex, age, view, positive findings)."""
    return pd.DataFrame([{"image_id": image, "patient_id": patient, "split": split, "sex": sex, "age": age,
                          "view": view, **{f: int(f in findings) for f in FINDINGS}}
                         for image, patient, split, sex, age, view, findings in rows])


BEFORE = manifest([("a.png", 1, "train", "F", 30, "PA", {"Mass"}), ("b.png", 1, "train", "F", 31, "PA", set()),
                   ("c.png", 2, "val", "M", 60, "AP", {"Effusion"}), ("d.png", 3, "test", "M", 70, "PA", set())])
AFTER = manifest([("a.png", 1, "train", "F", 30, "PA", {"Mass"}), ("b.png", 1, "train", "F", 31, "PA", set()),
                  ("c.png", 2, "test", "M", 60, "AP", {"Effusion"}),  # moved from val to test
                  ("e.png", 4, "train", "F", 40, "AP", {"Mass", "Effusion"}),  # new
                  ("f.png", 4, "train", "F", 41, "AP", {"Mass"})])  # new; d.png removed


def test_changes_are_counted_per_split_and_a_moved_image_counts_in_both():
    report = data_change(BEFORE, AFTER, "md5-of-before")
    assert report["splits"] == {
        "train": {"images_added": 2, "images_removed": 0, "patients_added": 1, "patients_removed": 0},
        "val": {"images_added": 0, "images_removed": 1, "patients_added": 0, "patients_removed": 1},
        "test": {"images_added": 1, "images_removed": 1, "patients_added": 1, "patients_removed": 1},
    }
    assert report["added"] == {"train": ["e.png", "f.png"], "val": [], "test": ["c.png"]}
    assert change_metrics(report) == {"images_added": 3, "images_removed": 2, "patients_added": 2,
                                      "patients_removed": 2}
    before, after = report["before"], report["after"]
    assert (before["prevalence"]["Mass"], after["prevalence"]["Mass"]) == (0.25, 0.6)
    assert (before["female_share"], after["female_share"]) == (0.5, 0.8)
    assert (before["median_age"], after["median_age"]) == (45.5, 40.0)
    assert (before["ap_share"], after["ap_share"]) == (0.25, 0.6)
    lines = change_lines(report)
    assert lines[0] == "since the last ingest: 3 images added, 2 removed (2 patients added, 2 removed)"
    assert "Mass 0.250 -> 0.600" in lines[1] and "Effusion 0.250 -> 0.400" in lines[1]


def lock_naming(tmp_path, manifest_path: str, md5: str):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"ingest": {"outs": [
        {"path": manifest_path, "md5": md5, "hash": "md5"}]}}}))
    return lock


def test_the_earlier_manifest_comes_from_dvcs_cache_by_the_locked_hash(tmp_path):
    earlier = tmp_path / "earlier.csv"
    BEFORE.to_csv(earlier, index=False)
    md5 = hashlib.md5(earlier.read_bytes()).hexdigest()
    written = tmp_path / "data" / "manifest.csv"  # what this ingest wrote: another manifest
    written.parent.mkdir()
    AFTER.to_csv(written, index=False)
    cache = tmp_path / "cache"
    lock = lock_naming(tmp_path, str(written), md5)
    missing, reason = previous_manifest(lock, str(written), cache)
    assert missing is None and reason == f"the earlier manifest ({md5}) is not in the local DVC cache: `dvc pull` " \
                                         "it to compare"
    (cache / md5[:2]).mkdir(parents=True)
    (cache / md5[:2] / md5[2:]).write_bytes(earlier.read_bytes())
    found, source = previous_manifest(lock, str(written), cache)
    assert source == md5 and list(found["image_id"]) == list(BEFORE["image_id"])


def test_a_manifest_that_is_the_locked_one_needs_no_cache_to_say_nothing_changed(tmp_path):
    # A fresh clone's first `dvc repro` of the committed data: dvc.lock names the manifest just written again,
    # and the cache is empty. The report is the committed run's (0 added), not "not in the local DVC cache".
    written = tmp_path / "manifest.csv"
    AFTER.to_csv(written, index=False)
    md5 = hashlib.md5(written.read_bytes()).hexdigest()
    found, source = previous_manifest(lock_naming(tmp_path, str(written), md5), str(written), tmp_path / "cache")
    assert source == md5
    report = data_change(found, AFTER, source)
    assert change_metrics(report) == {"images_added": 0, "images_removed": 0, "patients_added": 0,
                                      "patients_removed": 0}
    assert change_lines(report) == ["since the last ingest: 0 images added, 0 removed (0 patients added, 0 removed)"]


@pytest.mark.parametrize("lock_text", [None, "schema: '2.0'\nstages: {}\n", ": not yaml ["])
def test_without_an_earlier_manifest_the_report_says_why(tmp_path, lock_text):
    lock = tmp_path / "dvc.lock"
    if lock_text is not None:
        lock.write_text(lock_text)
    earlier, reason = previous_manifest(lock, "data/ingest/manifest.csv", tmp_path / "cache")
    report = data_change(earlier, AFTER, reason)
    assert earlier is None and report["compared_with"] is None and change_metrics(report) == {}
    assert change_lines(report) == [f"no earlier manifest: {lock} records none (the first ingest)"]
    assert report["after"]["images"] == 5
