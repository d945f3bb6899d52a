"""Patient metadata (age, sex, view) as a second model input: encoding, the
shards' TF twin of it, training, evaluation, Grad-CAM, the predict API and cxr."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from pipeline.core.labels import FINDINGS, MAX_AGE, MIN_AGE
from pipeline.core.model_io import uses_patient_metadata
from pipeline.core.patient import (
    AGE_SCALE,
    IMPUTED_AGE,
    PATIENT_ENCODING,
    PatientMetadataError,
    encode_patient,
    encode_patient_input,
    encode_patient_rows,
)
from pipeline.data.manifest import MANIFEST_COLUMNS
from pipeline.explain.gradcam import grad_cam
from pipeline.model.architectures import build_model, set_backbone_trainable
from pipeline.model.scoring import predict_split
from pipeline.model.train import train_model
from pipeline.records.dataset import make_dataset, patient_vector, shard_files
from pipeline.records.preprocess import write_tfrecord_shards
from pipeline.records.tfrecords import MISSING_AGE, parse_example
from pipeline.serve.cli import main as cxr_main
from pipeline.serve.predict import generate_gradcam, load_model, read_patient_metadata
from tests.conftest import NIH_2017_HEADER, NO_AUGMENT, section_settings, write_png

SIZE = 32
IMPUTED = IMPUTED_AGE / AGE_SCALE
# Findings whose label is a function of the metadata alone (the images are blank).
BY_VIEW, BY_SEX, BY_AGE = "Effusion", "Cardiomegaly", "Atelectasis"


def test_encoding_of_age_sex_and_view():
    np.testing.assert_allclose(encode_patient(61, "F", "AP"), [0.61, 0.0, 1.0])
    np.testing.assert_allclose(encode_patient("40", "m", " pa "), [0.40, 1.0, 0.0])
    np.testing.assert_allclose(encode_patient_rows([{"age": 0, "sex": "M", "view": "PA"},
                                                     {"age": 120, "sex": "F", "view": "AP"}]),
                               [[0.0, 1.0, 0.0], [1.2, 0.0, 1.0]])


@pytest.mark.parametrize("age, sex, view, message", [
    (-1, "M", "PA", "age must be 0..120"),
    (412, "M", "PA", "age must be 0..120"),  # NIH has a few such typos; validate rejects them too
    ("sixty", "M", "PA", "age must be a number"),
    (50, "O", "PA", "sex must be one of M, F"),
    (50, "F", "LL", "view must be one of PA, AP"),
])
def test_bad_metadata_is_named(age, sex, view, message):
    with pytest.raises(PatientMetadataError, match=message):
        encode_patient(age, sex, view)


def test_a_missing_field_names_its_row():
    with pytest.raises(PatientMetadataError, match="metadata row 1: sex missing"):
        encode_patient_rows([{"age": 1, "sex": "M", "view": "PA"}, {"age": 2, "view": "AP"}])
    with pytest.raises(PatientMetadataError, match="metadata row 0: view missing"):
        encode_patient_rows([{"sex": "M"}])


def test_imputed_age_is_the_median_age_of_nih(nih_subset):
    """IMPUTED_AGE is NIH ChestX-ray14's median age over its images with an age in 0..120."""
    ages = pd.read_csv(nih_subset / "Data_Entry_2017_v2020.csv.gz", usecols=["Patient Age"])["Patient Age"]
    assert len(ages) == 112_120
    known = ages[ages.between(MIN_AGE, MAX_AGE)]
    assert IMPUTED_AGE == known.median()
    assert str(IMPUTED_AGE) in PATIENT_ENCODING


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA, "", " "])
def test_a_missing_age_is_imputed_at_serving(missing):
    np.testing.assert_allclose(encode_patient(missing, "M", "AP"), [IMPUTED, 1.0, 1.0])
    np.testing.assert_allclose(encode_patient(missing, "F", "PA"), encode_patient(IMPUTED_AGE, "F", "PA"))


def test_rows_and_frames_without_an_age_are_imputed_and_others_kept():
    rows = [{"sex": "F", "view": "PA"}, {"age": None, "sex": "M", "view": "AP"}, {"age": 70, "sex": "M", "view": "PA"}]
    expected = [[IMPUTED, 0.0, 0.0], [IMPUTED, 1.0, 1.0], [0.70, 1.0, 0.0]]
    np.testing.assert_allclose(encode_patient_rows(rows), expected, rtol=1e-6)
    # as the ingest stage's manifest holds ages: pandas' nullable Int64, <NA> when NIH gave none
    frame = pd.DataFrame({"age": pd.array([None, None, 70], dtype="Int64"), "sex": ["F", "M", "M"],
                          "view": ["PA", "AP", "PA"]})
    np.testing.assert_allclose(encode_patient_input(frame, count=3), expected, rtol=1e-6)


def test_records_and_serving_encode_a_missing_age_alike():
    """patient_vector (the shards) reads MISSING_AGE, or an age outside 0..120,
    as encode_patient (serving) reads a missing age: IMPUTED_AGE."""
    for sex, view in (("M", "AP"), ("F", "PA")):
        served = encode_patient(None, sex, view)
        for stored in (MISSING_AGE, 414):
            recorded = patient_vector(tf.constant(stored, tf.int64), tf.constant(sex), tf.constant(view)).numpy()
            np.testing.assert_allclose(recorded, served, rtol=1e-6)
    for age in (0, 37, 120):
        recorded = patient_vector(tf.constant(age, tf.int64), tf.constant("F"), tf.constant("AP")).numpy()
        np.testing.assert_allclose(recorded, encode_patient(age, "F", "AP"), rtol=1e-6)


GREY_RAMP = np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1))


def blank_manifest(root, n: int, seed: int = 0) -> pd.DataFrame:
    """n identical PNGs (one grey ramp: a constant film is refused as blank) with
    random metadata; BY_VIEW is positive exactly on AP films, BY_SEX on men, BY_AGE over 60; the rest random and rare.
    Every tenth film has no age (<NA> in a nullable Int64 column, as ingest
    writes it), so BY_AGE is negative there, as for the imputed age.
    (Identical images: noise images would let the CNN memorise the train set.)"""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        image_id = f"{k:08d}_000.png"
        path = write_png(root / image_id, GREY_RAMP)
        age, sex, view = int(rng.integers(5, 95)), str(rng.choice(["M", "F"])), str(rng.choice(["PA", "AP"]))
        age = None if k % 10 == 3 else age
        labels = {f: int(rng.random() < 0.1) for f in FINDINGS}
        labels.update({BY_VIEW: int(view == "AP"), BY_SEX: int(sex == "M"),
                       BY_AGE: int(age is not None and age > 60)})
        split = "train" if k < 0.6 * n else "val" if k < 0.7 * n else "test"
        rows.append({"image_id": image_id, "path": str(path), "patient_id": k + 1, "follow_up": 0, "age": age,
                     "sex": sex, "view": view, "finding_labels": "No Finding", **labels, "split": split})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype({"age": "Int64"})


@pytest.fixture(scope="module")
def noise_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("metadata")
    manifest = blank_manifest(root / "images", 400)
    out = root / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, SIZE, shard_size=100)
    (out / "index.json").write_text(json.dumps(index))
    return out, manifest


def test_shards_give_the_same_metadata_vectors_as_encode_metadata(noise_shards):
    shards, manifest = noise_shards
    expected = {row.image_id: encode_patient(row.age, row.sex, row.view) for row in manifest.itertuples()}
    seen = 0
    for inputs, _, ids in make_dataset(shard_files(shards, "test"), 16, with_ids=True, metadata=True):
        assert set(inputs) == {"image", "metadata"}
        for vector, image_id in zip(inputs["metadata"].numpy(), ids.numpy()):
            np.testing.assert_allclose(vector, expected[image_id.decode()], rtol=1e-6)
            seen += 1
    assert seen == (manifest["split"] == "test").sum()


def test_training_records_without_an_age_hold_missing_age_and_decode_to_the_imputed_age(noise_shards):
    shards, manifest = noise_shards
    unknown = set(manifest.loc[manifest["age"].isna() & (manifest["split"] == "train"), "image_id"])
    assert unknown
    stored = {}
    for record in tf.data.TFRecordDataset(shard_files(shards, "train")).map(parse_example):
        stored[record["image_id"].numpy().decode()] = int(record["age"].numpy())
    assert {i for i, age in stored.items() if age == MISSING_AGE} == unknown
    decoded = {}
    for inputs, _, ids in make_dataset(shard_files(shards, "train"), 64, with_ids=True, metadata=True):
        decoded.update(zip((i.decode() for i in ids.numpy()), inputs["metadata"].numpy()[:, 0]))
    assert {decoded[i] for i in unknown} == {np.float32(IMPUTED)}
    known = {i: stored[i] / AGE_SCALE for i in decoded if i not in unknown}
    np.testing.assert_allclose([decoded[i] for i in known], list(known.values()), rtol=1e-6)


def trained(shards, use_metadata: bool, tmp_path):
    model = build_model("small_cnn", SIZE, "none", batchnorm_momentum=0.9, use_metadata=use_metadata)
    settings = section_settings("train", batch_size=16, epochs=10, learning_rate=1e-2, lr_schedule="constant",
                                augment=NO_AUGMENT)
    result = train_model(model, shards, tmp_path / f"model-{use_metadata}.keras", settings, seed=0)
    assert result["summary"]["uses_metadata"] is use_metadata
    return model


def test_the_model_learns_what_only_the_metadata_tells(noise_shards, tmp_path):
    """The images are all the same: findings defined by view, sex and age can
    only be learnt through the metadata input; the image-only model cannot."""
    shards, _ = noise_shards
    aucs = {}
    for use_metadata in (True, False):
        probs, labels, _ = predict_split(trained(shards, use_metadata, tmp_path), shards, "test", 16)
        aucs[use_metadata] = {f: roc_auc_score(labels[:, FINDINGS.index(f)], probs[:, FINDINGS.index(f)])
                              for f in (BY_VIEW, BY_SEX, BY_AGE)}
    assert min(aucs[True].values()) > 0.9, aucs
    assert max(aucs[False].values()) < 0.6, aucs


def test_warm_up_trains_the_metadata_layers_with_the_head():
    model = build_model("small_cnn", SIZE, "none", use_metadata=True)
    set_backbone_trainable(model, False)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"metadata_dense", "findings"}


def test_grad_cam_needs_the_metadata_and_does_not_depend_on_it():
    model = build_model("small_cnn", SIZE, "none", use_metadata=True)
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 1)).astype(np.float32)
    classes = np.array([0, 4, 13])
    with pytest.raises(ValueError, match="trained with patient metadata"):
        grad_cam(model, images, classes)
    old, young = encode_patient_rows([{"age": 80, "sex": "M", "view": "AP"}] * 3), np.zeros((3, 3), np.float32)
    for method in ("gradcam", "gradcam++"):
        maps = grad_cam(model, images, classes, method=method, metadata=old)
        assert maps.shape == (3, SIZE, SIZE) and maps.max() == pytest.approx(1.0)
        # The head is linear in [image features, metadata embedding], so the
        # gradient reaching the feature maps, and with it the map, is the same
        # whatever the metadata.
        np.testing.assert_allclose(maps, grad_cam(model, images, classes, method=method, metadata=young), atol=1e-6)
    with pytest.raises(ValueError, match="takes no patient metadata"):
        grad_cam(build_model("small_cnn", SIZE, "none"), images, classes, metadata=old)


@pytest.fixture(scope="module")
def metadata_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("metadata-model") / "model.keras"
    build_model("small_cnn", SIZE, "none", use_metadata=True).save(path)
    return path


def test_predict_api_takes_patient_metadata(metadata_model_file):
    model = load_model(metadata_model_file)
    assert model.uses_patient_metadata and uses_patient_metadata(model.keras_model)
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    patients = [{"age": 61, "sex": "F", "view": "AP"}, {"age": 30, "sex": "M", "view": "PA"}]
    expected = model.keras_model({"image": images, "metadata": encode_patient_rows(patients)}).numpy()
    np.testing.assert_allclose(model.predict(images, patients), expected, atol=1e-6)
    np.testing.assert_allclose(model.predict(images[0], patients[0]), expected[0], atol=1e-6)
    with pytest.raises(ValueError, match="give each image's age, sex and view"):
        model.predict(images)
    with pytest.raises(ValueError, match="2 image.*metadata for 1"):
        model.predict(images, patients[:1])
    assert generate_gradcam(model, images[0], metadata=patients[0]).shape == (SIZE, SIZE)


def test_patient_metadata_from_nih_csv_or_manifest(tmp_path):
    nih = tmp_path / "Data_Entry_2017.csv"
    nih.write_text(NIH_2017_HEADER + "\n00000001_000.png,Effusion,0,1,058,M,AP,2500,2048,0.143,0.143,\n")
    assert read_patient_metadata(nih) == {"00000001_000.png": {"age": 58, "sex": "M", "view": "AP"}}
    ours = tmp_path / "manifest.csv"
    ours.write_text("image_id,age,sex,view\nx.png,7,F,PA\n")
    assert read_patient_metadata(ours) == {"x.png": {"age": "7", "sex": "F", "view": "PA"}}
    (tmp_path / "other.csv").write_text("name,years\nx.png,7\n")
    with pytest.raises(ValueError, match="no column image_id, age, sex, view"):
        read_patient_metadata(tmp_path / "other.csv")


def test_cxr_with_a_metadata_model(metadata_model_file, tmp_path, capsys):
    rng = np.random.default_rng(2)
    first = write_png(tmp_path / "00000001_000.png", rng.integers(0, 256, (80, 80), dtype=np.uint8))
    second = write_png(tmp_path / "00000002_000.png", rng.integers(0, 256, (80, 80), dtype=np.uint8))
    model = ["--model", str(metadata_model_file)]

    assert cxr_main(["predict", str(first), *model]) == 2
    assert "trained with patient metadata" in capsys.readouterr().err
    assert cxr_main(["predict", str(first), *model, "--age", "61"]) == 2
    assert "--sex and --view together" in capsys.readouterr().err
    assert cxr_main(["predict", str(first), *model, "--age", "300", "--sex", "F", "--view", "AP"]) == 2
    assert "age must be 0..120" in capsys.readouterr().err
    assert cxr_main(["predict", str(first), *model, "--age", "-1", "--sex", "F", "--view", "AP"]) == 2
    assert "age must be 0..120 years (leave it out when unknown)" in capsys.readouterr().err
    assert cxr_main(["predict", str(first), *model, "--sex", "F", "--view", "AP", "--json"]) == 0
    no_age = json.loads(capsys.readouterr().out)[0]["probabilities"]
    imputed_age = load_model(metadata_model_file).predict(
        load_model(metadata_model_file).preprocess(first), {"age": None, "sex": "F", "view": "AP"})
    np.testing.assert_allclose([no_age[f] for f in FINDINGS], imputed_age, atol=1e-5)

    assert cxr_main(["predict", str(first), *model, "--age", "61", "--sex", "f", "--view", "ap", "--json",
                     "--gradcam", str(tmp_path / "cams")]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    expected = load_model(metadata_model_file).predict(
        load_model(metadata_model_file).preprocess(first), {"age": 61, "sex": "F", "view": "AP"})
    np.testing.assert_allclose([result["probabilities"][f] for f in FINDINGS], expected, atol=1e-5)
    assert all((tmp_path / "cams").joinpath(p).exists() or p for p in result["gradcam"].values())

    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(NIH_2017_HEADER + "\n00000001_000.png,No Finding,0,1,61,F,AP,80,80,0.143,0.143,\n")
    assert cxr_main(["predict", str(first), str(second), *model, "--metadata", str(table), "--json"]) == 1
    captured = capsys.readouterr()
    results = {r["image"]: r for r in json.loads(captured.out)}
    np.testing.assert_allclose([results[str(first)]["probabilities"][f] for f in FINDINGS], expected, atol=1e-5)
    assert "no row for 00000002_000.png" in results[str(second)]["error"]
    assert f"cxr: error: {second}: patient metadata: no row for 00000002_000.png" in captured.err

    # a manifest-style table whose age cell is empty: served with the imputed age, not refused
    unknown_age = tmp_path / "manifest.csv"
    unknown_age.write_text("image_id,age,sex,view\n00000001_000.png,,F,AP\n")
    assert cxr_main(["predict", str(first), *model, "--metadata", str(unknown_age), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    imputed = load_model(metadata_model_file).predict(
        load_model(metadata_model_file).preprocess(first), {"age": IMPUTED_AGE, "sex": "F", "view": "AP"})
    np.testing.assert_allclose([result["probabilities"][f] for f in FINDINGS], imputed, atol=1e-5)


def test_cxr_notes_metadata_given_to_an_image_only_model(tmp_path, capsys):
    path = tmp_path / "plain.keras"
    build_model("small_cnn", SIZE, "none").save(path)
    image = write_png(tmp_path / "a.png", np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1)))
    assert cxr_main(["predict", str(image), "--model", str(path), "--age", "5", "--sex", "M", "--view", "PA"]) == 0
    assert "takes no patient metadata" in capsys.readouterr().err


def test_decoded_metadata_encodes_back_to_the_same_numbers():
    from pipeline.core.patient import decode_patient_rows, encode_patient_rows

    rows = [{"age": 61, "sex": "M", "view": "AP"}, {"age": None, "sex": "F", "view": "PA"},
            {"age": 0, "sex": "f", "view": "pa"}, {"age": 120, "sex": "M", "view": "PA"}]
    encoded = encode_patient_rows(rows)
    decoded = decode_patient_rows(encoded)
    assert [(r["sex"], r["view"]) for r in decoded] == [("M", "AP"), ("F", "PA"), ("F", "PA"), ("M", "PA")]
    np.testing.assert_array_equal(encode_patient_rows(decoded), encoded)
