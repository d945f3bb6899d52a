"""The prediction API and the `cxr` command line, on a real MLflow registry
(SQLite in a temp dir) and real NIH images."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.explain.gradcam import grad_cam, overlay_heatmap
from pipeline.model.architectures import build_model
from pipeline.model.registry import register_model, registry_model_metadata
from pipeline.records.imaging import MIN_SIDE, ImageError, load_xray
from pipeline.serve.cli import label_overlay
from pipeline.serve.cli import main as cxr_main
from pipeline.serve.predict import FilmChecks, ModelLoadError, generate_gradcam, load_model, preprocess_xray
from tests.conftest import PROJECT_ROOT, mlflow_store, write_png

SIZE = 64
CXR = Path(sys.executable).parent / "cxr"
# Distinct per finding, so that a threshold applied to the wrong finding shows.
THRESHOLDS = {f: round(0.40 + 0.01 * i, 2) for i, f in enumerate(FINDINGS)}


def register_test_models(root: Path) -> SimpleNamespace:
    """A tracking store under `root` where chestxray v1 (a small_cnn) is the
    champion, and v2's metadata lists the findings in another order."""
    import mlflow

    store = f"sqlite:///{root / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    keras_path = root / "model.keras"
    model.save(keras_path)
    preprocessing = {"image_size": SIZE, "fit": "crop", "input": "float32 grey values 0..255, shape (size, size, 1)"}
    metadata = registry_model_metadata(THRESHOLDS, preprocessing, {"mean_auc": 0.5})
    reordered = {**metadata, "findings": list(reversed(FINDINGS))}
    with mlflow_store(store):
        experiment = mlflow.create_experiment("predict-tests", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            register_model(mlflow, model, "chestxray", metadata, {}, {"promote": True, "rule": "first", "reasons": []})
        with mlflow.start_run(experiment_id=experiment):
            register_model(mlflow, model, "chestxray", reordered, {},
                           {"promote": False, "rule": "refused", "reasons": [], "champion_version": 1})
    return SimpleNamespace(store=store, keras_path=keras_path, keras_model=model, run_id=run.info.run_id)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return register_test_models(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def champion(registry):
    return load_model("models:/chestxray@champion", tracking_uri=registry.store)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 1)).astype(np.float32)


def png_colour_type(path: Path) -> int:
    """From the IHDR chunk, without decoding the image: 0 gray, 2 RGB, 6 RGBA."""
    with open(path, "rb") as file:
        return file.read(26)[25]


def nih_images(root: Path, gray: int = 2) -> list[Path]:
    """An RGBA PNG among the real NIH images, and `gray` ordinary ones."""
    files = sorted((root / "images_001" / "images").glob("*.png"))
    rgba = next(p for p in files if png_colour_type(p) == 6)
    assert cv2.imread(str(rgba), cv2.IMREAD_UNCHANGED).shape[2] == 4
    return [rgba, *[p for p in files if png_colour_type(p) == 0][:gray]]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def oversized_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A well-formed PNG header claiming width x height pixels: a decompression bomb's opening."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def sixteen_bit_png(path: Path) -> Path:
    image = np.linspace(0, 65535, 90 * 120).reshape(90, 120).astype(np.uint16)
    write_png(path, image)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return path


def rgb_jpeg(path: Path) -> Path:
    image = np.random.default_rng(1).integers(0, 255, (100, 80, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def bad_inputs(folder: Path, real_png: Path) -> dict[Path, str]:
    """Files cxr must refuse, each with a word its error message must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.png").write_text("not an x-ray")
    (folder / "empty.png").write_bytes(b"")
    data = real_png.read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "bomb.png").write_bytes(oversized_png())
    (folder / "a-directory.png").mkdir(exist_ok=True)
    write_png(folder / "dot.png", np.zeros((1, 1), np.uint8))
    write_png(folder / "strip.png", np.full((40, 3000), 128, np.uint8))
    return {
        folder / "missing.png": "No such file",
        folder / "notes.png": "not a readable",
        folder / "empty.png": "0 bytes",
        folder / "cut.png": "truncated",
        folder / "bomb.png": "exceeds the limit",
        folder / "a-directory.png": "is a directory, not an image file",
        folder / "dot.png": f"1x1 pixels: the shorter side is below the minimum of {MIN_SIDE} px (--min-side)",
        folder / "strip.png": "3000x40: aspect ratio 75.0 is beyond",
    }


def band_height(overlay: np.ndarray) -> int:
    """How many top rows of a Grad-CAM overlay are label_overlay's band: its grey band and white caption are
    neutral (B = G = R), while every pixel of the heatmap's colour map below has some hue."""
    neutral = (overlay.max(axis=2) == overlay.min(axis=2)).all(axis=1)
    return int(np.argmin(neutral)) if not neutral.all() else len(neutral)


# --- import cost -----------------------------------------------------------


def test_pipeline_imaging_and_cli_import_no_tensorflow():
    # Preprocessing workers import pipeline.records.imaging; `cxr --help` should be instant.
    code = (
        "import sys, pipeline, pipeline.records.imaging, pipeline.serve.cli; "
        "print([m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_api_importable_from_the_package():
    import pipeline
    import pipeline.serve.predict
    from pipeline import generate_gradcam as from_package_gradcam
    from pipeline import load_model as from_package_load
    from pipeline import preprocess_xray as from_package_preprocess

    assert from_package_load is pipeline.serve.predict.load_model
    assert from_package_preprocess is pipeline.serve.predict.preprocess_xray
    assert from_package_gradcam is pipeline.serve.predict.generate_gradcam
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        _ = pipeline.no_such_thing


# --- preprocessing ---------------------------------------------------------


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_preprocess_is_the_training_convention(nih_subset, tmp_path, fit):
    files = [*nih_images(nih_subset, gray=1), sixteen_bit_png(tmp_path / "16bit.png"), rgb_jpeg(tmp_path / "rgb.jpg")]
    for path in files:
        pixels = preprocess_xray(path, SIZE, fit)
        assert pixels.dtype == np.float32 and pixels.shape == (SIZE, SIZE, 1)
        np.testing.assert_array_equal(pixels[..., 0], load_xray(path, SIZE, fit))


def test_model_preprocesses_with_its_own_size_and_fit(champion, tmp_path):
    path = rgb_jpeg(tmp_path / "rgb.jpg")
    np.testing.assert_array_equal(champion.preprocess(path), preprocess_xray(path, SIZE, "crop"))


def test_films_of_implausible_shape_are_refused_with_the_reason(champion, tmp_path):
    dot = write_png(tmp_path / "dot.png", np.zeros((1, 1), np.uint8))
    strip = write_png(tmp_path / "strip.png", np.full((40, 3000), 128, np.uint8))
    with pytest.raises(ImageError, match=rf"^{dot}: 1x1 pixels: the shorter side is below the minimum of {MIN_SIDE}"):
        champion.preprocess(dot)
    with pytest.raises(ImageError, match=rf"^{strip}: 3000x40: aspect ratio 75.0 is beyond 2.0"):
        preprocess_xray(strip, SIZE)
    # The limits are the caller's to move: a thumbnail pipeline may accept what a radiology one refuses.
    lenient = FilmChecks(min_side=1, max_aspect=100, min_grey_range=0)
    assert preprocess_xray(dot, SIZE, checks=lenient).shape == (SIZE, SIZE, 1)
    assert preprocess_xray(strip, SIZE, checks=lenient).shape == (SIZE, SIZE, 1)


# --- loading ---------------------------------------------------------------


@pytest.mark.parametrize("uri", ["models:/chestxray@champion", "models:/chestxray/1", "runs:/{run_id}/model"])
def test_load_registered_model_with_its_model_card(registry, uri):
    uri = uri.format(run_id=registry.run_id)
    model = load_model(uri, tracking_uri=registry.store)
    assert model.findings == FINDINGS and model.image_size == SIZE and model.fit == "crop"
    assert model.thresholds == pytest.approx(THRESHOLDS) and list(model.thresholds) == list(FINDINGS)
    assert model.source == uri and "metadata" in model.thresholds_source
    images = random_images(2)
    np.testing.assert_allclose(model.predict(images), registry.keras_model(images).numpy(), atol=1e-5)


def test_tracking_store_from_the_environment(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.store)
    assert load_model("models:/chestxray@champion").thresholds == pytest.approx(THRESHOLDS)


def test_load_bare_keras_file(registry, tmp_path):
    model = load_model(registry.keras_path)
    assert model.image_size == SIZE and model.fit == "crop" and model.source == str(registry.keras_path)
    assert set(model.thresholds.values()) == {0.5} and "default 0.5" in model.thresholds_source
    thresholds_file = tmp_path / "thresholds.json"
    thresholds_file.write_text(json.dumps(THRESHOLDS))
    from_file = load_model(registry.keras_path, thresholds=thresholds_file)
    assert from_file.thresholds == pytest.approx(THRESHOLDS) and from_file.thresholds_source == str(thresholds_file)
    assert load_model(registry.keras_path, thresholds=THRESHOLDS).thresholds == pytest.approx(THRESHOLDS)


@pytest.mark.parametrize(
    "uri,problem",
    [
        ("models:/chestxray@nope", "alias nope not found"),
        ("models:/nothere/1", r"name=nothere, version=1\) not found"),
        ("models:/chestxray/2", "findings"),
        ("runs:/0123456789abcdef/model", "0123456789abcdef not found"),
        ("models:/chestxray", "not a supported MLflow model URI"),
        ("{tmp}/missing.keras", "no such model file"),
        ("{tmp}/notes.txt", "not a .keras file"),
        ("{tmp}/broken.keras", "cannot load as a Keras model"),
    ],
)
def test_unloadable_model_named_with_the_reason(registry, tmp_path, uri, problem):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.keras").write_bytes(b"PK not really a zip")
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(ModelLoadError, match=problem) as error:
        load_model(uri, tracking_uri=registry.store)
    assert str(error.value).startswith(f"{uri}: ")


def test_no_tracking_store_is_an_error_not_a_new_store(tmp_path):
    store = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ModelLoadError, match=r"models:/chestxray@champion: no MLflow tracking store"):
        load_model("models:/chestxray@champion", tracking_uri=f"sqlite:///{store}")
    assert not store.parent.exists()


def test_thresholds_must_cover_every_finding(registry, tmp_path):
    partial = tmp_path / "thresholds.json"
    partial.write_text(json.dumps({"Mass": 0.3}))
    with pytest.raises(ModelLoadError, match=f"{partial}: expected one threshold for each"):
        load_model(registry.keras_path, thresholds=partial)


# --- predicting and explaining ----------------------------------------------


def test_predict_one_image_or_a_batch(champion, registry):
    images = random_images(3)
    expected = registry.keras_model(images).numpy()
    batch = champion.predict(images)
    assert batch.shape == (3, 14) and batch.dtype == np.float64  # the one numeric policy (core.recalibration)
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    np.testing.assert_allclose(champion.predict(images[0]), expected[0], atol=1e-5)
    np.testing.assert_allclose(champion.predict(images[0, ..., 0]), expected[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"expected \(64, 64, 1\) images"):
        champion.predict(np.zeros((32, 32, 1), np.float32))


def test_positive_findings_at_or_above_threshold(champion):
    probabilities = np.array([THRESHOLDS[f] - 0.01 for f in FINDINGS], np.float32)
    probabilities[FINDINGS.index("Mass")] = THRESHOLDS["Mass"]
    probabilities[FINDINGS.index("Hernia")] = 0.99
    assert champion.positive_findings(probabilities) == ["Hernia", "Mass"]


def test_gradcam_for_the_top_finding_or_the_one_asked(champion, registry):
    image = random_images(1, seed=3)[0]
    top = int(np.argmax(champion.predict(image)))
    heatmap = generate_gradcam(champion, image)
    assert heatmap.shape == (SIZE, SIZE) and 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    np.testing.assert_allclose(heatmap, grad_cam(registry.keras_model, image[None], np.array([top]))[0], atol=1e-5)
    np.testing.assert_allclose(heatmap, generate_gradcam(champion, image, finding=FINDINGS[top]), atol=1e-5)
    other = (top + 1) % len(FINDINGS)
    np.testing.assert_allclose(
        generate_gradcam(registry.keras_model, image, finding=FINDINGS[other], layer_name="block2_relu"),
        grad_cam(registry.keras_model, image[None], np.array([other]), layer_name="block2_relu")[0],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="unknown finding 'Fracture'"):
        generate_gradcam(champion, image, finding="Fracture")
    with pytest.raises(ValueError, match="one image"):
        generate_gradcam(champion, random_images(2))


# --- the cxr command -----------------------------------------------------------


def run_cxr(args: list[str], store: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    return subprocess.run([str(CXR), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cxr_json_on_real_and_bad_images(registry, champion, nih_subset, tmp_path):
    real = nih_images(nih_subset)
    good = [*real, sixteen_bit_png(tmp_path / "16bit.png"), rgb_jpeg(tmp_path / "colour.jpg")]
    bad = bad_inputs(tmp_path / "bad", real[1])
    # Good and bad interleaved, in batches of 4: a failure must not stop its batch.
    images = [str(p) for pair in zip(good, bad) for p in pair] + [str(p) for p in list(bad)[len(good):]]
    overlays = tmp_path / "overlays"
    done = run_cxr(["predict", *images, "--json", "--gradcam", str(overlays), "--batch-size", "4"],
                   registry.store, tmp_path)

    assert done.returncode == 1, done.stderr
    results = json.loads(done.stdout)
    assert [r["image"] for r in results] == images
    by_image = {r["image"]: r for r in results}
    for path in good:
        result = by_image[str(path)]
        assert "error" not in result and list(result["probabilities"]) == list(FINDINGS)
        assert (result["model"], result["model_version"]) == ("models:/chestxray@champion", "1")
        assert result["model_run_id"] == registry.run_id
        pixels = champion.preprocess(path)
        probabilities = np.array(list(result["probabilities"].values()))
        np.testing.assert_allclose(probabilities, champion.predict(pixels), atol=1e-5)
        assert result["findings"] == champion.positive_findings(probabilities)
        explained = result["findings"] or [FINDINGS[int(np.argmax(probabilities))]]
        assert list(result["gradcam"]) == explained
        for finding, picture in result["gradcam"].items():
            assert picture == str(overlays / f"{path.stem}_{finding}.png")
            written = cv2.imread(picture)
            assert written.shape == (SIZE, SIZE, 3)
            unlabelled = overlay_heatmap(pixels, generate_gradcam(champion, pixels, finding=finding))
            band = band_height(written)
            # The caption's band replaces the top rows; the heatmap below it is the unlabelled overlay's.
            assert 0 < band < SIZE // 4 and (written[:band] != unlabelled[:band]).mean() > 0.5
            assert (written[:band].max(axis=2) > 200).any(), "no white caption text in the band"
            assert np.abs(written[band:].astype(int) - unlabelled[band:]).mean() < 1.0
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("cxr: error: ")]
    assert len(error_lines) == len(bad)
    for path, problem in bad.items():
        error = by_image[str(path)]["error"]
        assert problem in error and str(path) not in error, error  # the entry's "image" names the file
        assert f"cxr: error: {path}: {error}" in error_lines, (path, done.stderr)
    assert "Traceback" not in done.stderr


def test_cxr_text_lines_from_a_keras_file(registry, tmp_path, capsys):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(THRESHOLDS))
    images = [sixteen_bit_png(tmp_path / "16bit.png"), rgb_jpeg(tmp_path / "colour.jpg")]
    status = cxr_main(["predict", *map(str, images), "--model", str(registry.keras_path),
                       "--thresholds", str(thresholds)])
    out, err = capsys.readouterr()
    assert status == 0 and err == ""
    model_line, *lines = out.splitlines()
    assert model_line == f"model: {registry.keras_path}"
    assert [line.split(": ")[0] for line in lines] == list(map(str, images))


def test_cxr_says_which_version_the_alias_resolved_to(registry, tmp_path, capsys):
    image = rgb_jpeg(tmp_path / "colour.jpg")
    assert cxr_main(["predict", str(image), str(image), "--tracking-uri", registry.store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model: models:/chestxray@champion = version 1 (run {registry.run_id})"
    assert len(lines) == 3 and not any(line.startswith("model:") for line in lines[1:])
    assert cxr_main(["predict", str(image), "--model", "models:/chestxray/1", "--tracking-uri", registry.store]) == 0
    assert capsys.readouterr().out.startswith(f"model: models:/chestxray/1 = version 1 (run {registry.run_id})\n")
    run_uri = f"runs:/{registry.run_id}/model"
    assert cxr_main(["predict", str(image), "--model", run_uri, "--tracking-uri", registry.store]) == 0
    assert capsys.readouterr().out.startswith(f"model: {run_uri} (run {registry.run_id})\n")


def test_overlay_caption_is_legible_at_the_served_size():
    heatmap = np.tile(np.linspace(0, 1, 320, dtype=np.float32), (320, 1))
    picture = overlay_heatmap(np.full((320, 320, 1), 200, np.float32), heatmap)
    labelled = label_overlay(picture, "Effusion 0.83")
    band = band_height(labelled)
    assert 0 < band < 320 // 4
    text = np.argwhere(labelled[:band].max(axis=2) > 200)
    rows, columns = np.ptp(text[:, 0]) + 1, np.ptp(text[:, 1]) + 1
    # OpenCV's Hershey font needs about 8 px of cap height to be read; the caption spans much of the width.
    assert rows >= 12 and columns >= 100, (rows, columns)
    np.testing.assert_array_equal(labelled[band:], picture[band:])
    assert band_height(picture) == 0, "label_overlay drew on its input"


def test_cxr_unloadable_model_is_one_line_and_status_1(registry, tmp_path, capsys):
    image = rgb_jpeg(tmp_path / "colour.jpg")
    status = cxr_main(["predict", str(image), "--model", "models:/chestxray@nope", "--tracking-uri", registry.store])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith("cxr: error: models:/chestxray@nope: ")


@pytest.mark.parametrize("args", [[], ["predict"], ["predict", "x.png", "--batch-size", "0"], ["classify", "x.png"]])
def test_cxr_usage_errors_exit_2(args, capsys):
    assert cxr_main(args) == 2
    assert "usage: cxr" in capsys.readouterr().err


def test_pyfunc_refuses_what_is_not_preprocess_xrays_output(registry):
    """Preprocessed films still go in (a column of arrays); one that is not
    preprocess_xray's output is that film's error, and the others are scored."""
    with mlflow_store(registry.store) as mlflow:
        pyfunc = mlflow.pyfunc.load_model("models:/chestxray@champion")
    images = random_images(2)
    answer = pyfunc.predict({"image": images})
    np.testing.assert_allclose(answer[list(FINDINGS)].to_numpy(dtype=float), registry.keras_model(images).numpy(),
                               atol=1e-5)
    assert answer["error"].isna().all()
    # Raw 16-bit values would otherwise be scored as an all-white film, without complaint.
    mixed = pyfunc.predict({"image": np.stack([images[0], images[1] * 257])})
    assert mixed["error"][0] is None and mixed["Mass"][0] is not None
    assert re.fullmatch(r"a preprocessed film has grey values 0\.\.255 .*got [0-9.]+\.\.65[0-9.]+", mixed["error"][1])
    assert mixed["Mass"][1] is None and mixed["findings"][1] == []



def test_pyfunc_takes_film_bytes_as_cxr_predict_reads_the_files(registry, nih_subset):
    """Film bytes (or their base64 text, as a client may send it) are read,
    checked and scored as `cxr predict` reads the files; a bad film is that
    film's error, with the reason `cxr predict` gives, and the others are scored."""
    import base64

    import pandas as pd

    with mlflow_store(registry.store) as mlflow:
        pyfunc = mlflow.pyfunc.load_model("models:/chestxray@champion")
    png = nih_images(nih_subset, gray=1)[1]
    cells = [png.read_bytes(), base64.b64encode(png.read_bytes()).decode("ascii"), b"not a film", b""]
    answer = pyfunc.predict(pd.DataFrame({"image": cells}))
    champion = load_model("models:/chestxray@champion", tracking_uri=registry.store)
    expected = champion.predict(champion.preprocess(png))
    for row in (0, 1):
        assert answer["error"][row] is None
        # one film alone against two in a batch: float32 sums in another order, so equal to 1e-6, not to the bit
        np.testing.assert_allclose(answer.loc[row, list(FINDINGS)].to_numpy(dtype=np.float64), expected, atol=1e-6)
        assert answer["findings"][row] == champion.positive_findings(expected)
    assert answer["error"][2] == ("not a readable PNG, JPEG or DICOM image (its first bytes are none of their "
                                  "signatures)")
    assert answer["error"][3] == "empty file (0 bytes)"
    assert list(answer["model_version"]) == ["1"] * 4 and answer.loc[2, list(FINDINGS)].isna().all()
