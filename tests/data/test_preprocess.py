"""Preprocess on real PNG files: pixels, determinism, quarantine."""
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.records.dataset import make_dataset
from pipeline.records.imaging import load_xray
from pipeline.records.preprocess import write_tfrecord_shards
from tests.conftest import build_manifest

RATIOS = {"train": 0.5, "val": 0.25, "test": 0.25}


def shards(manifest, out: Path, workers: int, size: int = 32, shard_size: int = 3):
    out.mkdir()
    return write_tfrecord_shards(manifest, out, image_size=size, shard_size=shard_size, workers=workers)


def read_back(out: Path, index: dict) -> dict:
    files = [str(out / s["file"]) for s in index["shards"]]
    records = {}
    for image, labels, image_id in make_dataset(files, 1, with_ids=True):
        records[image_id.numpy()[0].decode()] = (image.numpy()[0, :, :, 0], labels.numpy()[0])
    return records


def test_records_hold_the_reference_pixels_and_labels(small_nih_root, tmp_path):
    manifest, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    index, quarantine = shards(manifest, tmp_path / "out", workers=1)
    assert quarantine.empty
    assert sum(s["records"] for s in index["shards"]) == len(manifest) == 12
    assert all(s["records"] <= 3 for s in index["shards"])
    records = read_back(tmp_path / "out", index)
    for row in manifest.itertuples(index=False):
        image, labels = records[row.image_id]
        np.testing.assert_array_equal(image, load_xray(row.path, 32))
        np.testing.assert_array_equal(labels, [getattr(row, f) for f in FINDINGS])
    train_positives = manifest[manifest["split"] == "train"][list(FINDINGS)].sum()
    assert index["splits"]["train"]["positives"] == {f: int(train_positives[f]) for f in FINDINGS}


def test_byte_identical_whatever_the_worker_count(small_nih_root, tmp_path):
    manifest, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    one, _ = shards(manifest, tmp_path / "one", workers=1)
    two, _ = shards(manifest, tmp_path / "two", workers=2)
    assert one == two
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["file"]).read_bytes() == (tmp_path / "two" / shard["file"]).read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_images_quarantined_and_the_rest_written(small_nih_root, tmp_path, workers):
    images = small_nih_root / "images"
    (images / "00000001_000.png").write_bytes(b"")
    good = (images / "00000002_000.png").read_bytes()
    (images / "00000002_000.png").write_bytes(good[: len(good) // 2])
    (images / "00000003_000.png").write_text("this is not an image")
    manifest, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    index, quarantine = shards(manifest, tmp_path / "out", workers=workers)
    assert sorted(quarantine["image_id"]) == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    reasons = dict(zip(quarantine["image_id"], quarantine["reason"]))
    assert "empty file" in reasons["00000001_000.png"]
    assert "00000003_000.png: not a readable" in reasons["00000003_000.png"]
    assert sum(s["records"] for s in index["shards"]) == 9
    assert len(read_back(tmp_path / "out", index)) == 9


def test_real_nih_pngs(nih_subset, tmp_path):
    manifest, _ = build_manifest(nih_subset, RATIOS, seed=0)
    sample = manifest.groupby("split").head(4)
    index, quarantine = shards(sample, tmp_path / "out", workers=2, size=64, shard_size=100)
    assert quarantine.empty and sum(s["records"] for s in index["shards"]) == len(sample)
    records = read_back(tmp_path / "out", index)
    for row in sample.itertuples(index=False):
        np.testing.assert_array_equal(records[row.image_id][0], load_xray(row.path, 64))


def test_a_record_is_the_same_bytes_in_every_process():
    """Protobuf map order varies per process unless serialisation is deterministic."""
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    code = ("from pipeline.records.tfrecords import serialize_example; import sys; "
            "sys.stdout.write(serialize_example(b'png', [1] + [0] * 13, 'a.png', 1, 40, 'F', 'PA', 1024, 1024).hex())")
    outputs = {subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True).stdout for _ in range(4)}
    assert len(outputs) == 1
