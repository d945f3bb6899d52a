"""Training on real TFRecord shards: class weights, loss, checkpoint, every backbone builds."""
import numpy as np
import pytest
import tensorflow as tf

from pipeline.ingest import build_manifest
from pipeline.labels import FINDINGS
from pipeline.models import BACKBONES, build_model, load_model
from pipeline.preprocess import write_tfrecord_shards
from pipeline.train import MAX_POSITIVE_WEIGHT, positive_weights, train_model, weighted_binary_crossentropy


def index_with(train_positives: dict, records: int) -> dict:
    return {"splits": {"train": {"records": records, "positives": {f: train_positives.get(f, 0) for f in FINDINGS}}}}


def test_positive_weights_from_train_counts():
    weights = positive_weights(index_with({"Mass": 10, "Effusion": 50, "Hernia": 0}, 100))
    assert weights[FINDINGS.index("Mass")] == pytest.approx(9.0)
    assert weights[FINDINGS.index("Effusion")] == pytest.approx(1.0)
    assert weights[FINDINGS.index("Hernia")] == MAX_POSITIVE_WEIGHT


def test_weighted_bce_scales_only_positive_terms():
    pos_weight = np.full(14, 4.0, np.float32)
    loss = weighted_binary_crossentropy(pos_weight)
    y_pred = tf.fill((1, 14), 0.5)
    plain = -np.log(0.5)
    assert float(loss(tf.ones((1, 14)), y_pred)[0]) == pytest.approx(4 * plain, rel=1e-5)
    assert float(loss(tf.zeros((1, 14)), y_pred)[0]) == pytest.approx(plain, rel=1e-5)


def test_small_model_trains_and_checkpoints(small_nih_root, tmp_path):
    manifest, _ = build_manifest(small_nih_root, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=100)
    (out / "index.json").write_text(__import__("json").dumps(index))
    model = build_model("small_cnn", 32, "none", batchnorm_momentum=0.9)
    checkpoint = tmp_path / "model.keras"
    settings = {"batch_size": 4, "epochs": 2, "learning_rate": 1e-3, "augment": {"brightness": 0.1, "shift": 0.05}}
    result = train_model(model, out, checkpoint, settings, seed=0)
    assert result["summary"]["epochs"] == 2 and len(result["history"]["loss"]) == 2
    assert np.isfinite(result["history"]["loss"]).all()
    reloaded = load_model(checkpoint)
    assert reloaded.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0).shape == (1, 14)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_and_steps(backbone):
    model = build_model(backbone, 64, "none")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
    y = np.zeros((2, 14), np.float32)
    model.train_on_batch(x, y)
    assert model.predict(x, verbose=0).shape == (2, 14)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_model("small_cnn", 32, str(tmp_path / "nope.weights.h5"))
