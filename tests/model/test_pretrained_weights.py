"""train.weights: imagenet: Keras's cached file, or a download as Keras does it, else one line.

No test touches the internet: the URLs point at a closed port on 127.0.0.1
(which proves no download was attempted where the cache must serve), or at a
real HTTP server on 127.0.0.1 that serves files from a tmp dir.
"""
from __future__ import annotations

import hashlib
import http.server
import inspect
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.model import pretrained
from pipeline.model.architectures import assemble_model, build_model
from pipeline.model.backbones import imagenet_weights_source
from pipeline.model.pretrained import ImagenetWeightsUnavailable, WeightsSource, fetch_imagenet_weights
from tests.conftest import free_port, section_settings

DENSENET_FILE = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"


def closed_port_url(name: str) -> str:
    return f"http://127.0.0.1:{free_port()}/keras-applications/{name}"


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served_dir(tmp_path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a tmp folder: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_offline_fails_fast_in_one_line_naming_file_url_and_destination(keras_home):
    source = replace(imagenet_weights_source("densenet121", 320), url=closed_port_url(DENSENET_FILE))
    started = time.monotonic()
    with pytest.raises(ImagenetWeightsUnavailable) as raised:
        fetch_imagenet_weights(source)
    message = str(raised.value)
    assert time.monotonic() - started < 10
    assert "\n" not in message
    assert message.startswith(f"train.weights imagenet: cannot download {DENSENET_FILE} from {source.url} (no network:")
    assert message.endswith(f"download it elsewhere and put it at {keras_home / 'models' / DENSENET_FILE}")
    assert not (keras_home / "models" / DENSENET_FILE).exists()


def test_corrupt_cached_file_is_named_removed_and_not_used(keras_home):
    cached = keras_home / "models" / DENSENET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"the first bytes of an interrupted download")
    source = replace(imagenet_weights_source("densenet121", 320), url=closed_port_url(DENSENET_FILE))
    with pytest.raises(ImagenetWeightsUnavailable) as raised:
        fetch_imagenet_weights(source)
    message = str(raised.value)
    assert "\n" not in message
    assert f"{cached} failed its md5 check (expected {source.md5}, found " in message
    assert f"cannot download {DENSENET_FILE} from {source.url} (no network:" in message
    assert message.endswith(f"put it at {cached}")
    assert not cached.exists()


def test_cached_file_with_the_right_hash_is_used_without_a_download(keras_home):
    content = b"weights as Keras cached them"
    cached = keras_home / "models" / DENSENET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    # The closed port would fail any download attempt.
    source = WeightsSource(DENSENET_FILE, closed_port_url(DENSENET_FILE), md5_of(content))
    assert fetch_imagenet_weights(source) == cached
    assert cached.read_bytes() == content


def test_cached_file_without_a_published_hash_is_used_as_is(keras_home):
    source = imagenet_weights_source("mobilenetv2", 128)
    assert source.md5 is None  # Keras publishes none for MobileNetV2
    cached = keras_home / "models" / source.file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"any content")
    assert fetch_imagenet_weights(replace(source, url=closed_port_url(source.file_name))) == cached


def test_missing_file_is_downloaded_into_keras_cache(keras_home, served_dir):
    folder, base_url = served_dir
    content = b"imagenet weights, served over HTTP"
    (folder / DENSENET_FILE).write_bytes(content)
    fetched = fetch_imagenet_weights(WeightsSource(DENSENET_FILE, base_url + DENSENET_FILE, md5_of(content)))
    assert fetched == keras_home / "models" / DENSENET_FILE
    assert fetched.read_bytes() == content


def test_download_with_the_wrong_hash_is_named_and_removed(keras_home, served_dir):
    folder, base_url = served_dir
    (folder / DENSENET_FILE).write_bytes(b"a truncated copy")
    source = WeightsSource(DENSENET_FILE, base_url + DENSENET_FILE, md5_of(b"the real file"))
    with pytest.raises(ImagenetWeightsUnavailable) as raised:
        fetch_imagenet_weights(source)
    message = str(raised.value)
    assert "\n" not in message
    assert f"the download of {DENSENET_FILE} from {source.url} failed its md5 check" in message
    assert f"found {md5_of(b'a truncated copy')}" in message
    assert not (keras_home / "models" / DENSENET_FILE).exists()


def test_http_error_is_named(keras_home, served_dir):
    _, base_url = served_dir
    with pytest.raises(ImagenetWeightsUnavailable, match=rf"from {base_url}{DENSENET_FILE} \(HTTP 404 "):
        fetch_imagenet_weights(WeightsSource(DENSENET_FILE, base_url + DENSENET_FILE, None))


def test_train_stage_fails_on_imagenet_weights_before_mlflow_or_data(tmp_path, keras_home, monkeypatch):
    """The weights are fetched when the model is built, the train stage's first
    step: no shards are read and no MLflow store is opened."""
    from pipeline.model.train import train_and_track

    monkeypatch.setattr(pretrained, "KERAS_APPLICATIONS_URL", f"http://127.0.0.1:{free_port()}/")
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    settings = section_settings("train", backbone="densenet121", weights="imagenet", deterministic=False,
                                mixed_precision=False)
    with pytest.raises(ImagenetWeightsUnavailable, match=rf"cannot download {DENSENET_FILE} from http://127\.0\.0\.1"):
        train_and_track(tmp_path / "no-shards", tmp_path / "model.keras", settings, image_size=64, seed=0,
                        experiment="weights-check", logged_params={})
    assert not store.exists()
    assert not (tmp_path / "model.keras").exists()


def test_fetched_weights_load_into_the_grey_input_model(keras_home, tmp_path):
    """The ImageNet file holds a 3-channel backbone; ours takes one grey channel,
    repeated to three before the backbone, so the file's weights load as they are."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    size = 32
    stand_in = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(size, size, 3))
    stem = stand_in.get_layer("conv1_conv")
    stem.set_weights([np.random.default_rng(0).normal(size=w.shape).astype(np.float32) for w in stem.get_weights()])
    cached = keras_home / "models" / DENSENET_FILE
    cached.parent.mkdir(parents=True)
    with h5py.File(cached, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, stand_in)
    source = WeightsSource(DENSENET_FILE, closed_port_url(DENSENET_FILE), hashlib.md5(cached.read_bytes()).hexdigest())
    model = assemble_model("densenet121", size, "imagenet", imagenet_file=fetch_imagenet_weights(source))
    assert model.input_shape == (None, size, size, 1)
    np.testing.assert_array_equal(model.get_layer("conv1_conv").get_weights()[0], stem.get_weights()[0])


def test_own_backbones_have_no_imagenet_weights(keras_home):
    with pytest.raises(ValueError, match="no weights for train.backbone 'resnet18'"):
        build_model("resnet18", 64, "imagenet")


@pytest.mark.parametrize("backbone", ["densenet121", "resnet50", "vgg16", "mobilenetv2", "efficientnetb0"])
def test_urls_and_hashes_are_the_installed_keras_ones(backbone):
    """Our table copies keras/src/applications; a Keras upgrade that moves a
    file or changes a hash must show up here, not as a failed download."""
    from keras.src.applications import densenet, efficientnet, mobilenet_v2, resnet, vgg16

    source = imagenet_weights_source(backbone, 160)
    keras_url = {
        "densenet121": densenet.DENSENET121_WEIGHT_PATH_NO_TOP,
        "resnet50": resnet.BASE_WEIGHTS_PATH + source.file_name,
        "vgg16": vgg16.WEIGHTS_PATH_NO_TOP,
        "mobilenetv2": mobilenet_v2.BASE_WEIGHT_PATH + source.file_name,
        "efficientnetb0": efficientnet.BASE_WEIGHTS_PATH + source.file_name,
    }[backbone]
    assert source.url == keras_url
    keras_hash = {
        "resnet50": resnet.WEIGHTS_HASHES["resnet50"][1],
        "efficientnetb0": efficientnet.WEIGHTS_HASHES["b0"][1],
    }
    if backbone in keras_hash:
        assert source.md5 == keras_hash[backbone]
    elif source.md5 is not None:
        # DenseNet's and VGG16's hashes are literals in their constructors.
        module = {"densenet121": densenet, "vgg16": vgg16}[backbone]
        assert f'file_hash="{source.md5}"' in inspect.getsource(module)
    else:
        assert "file_hash" not in inspect.getsource(mobilenet_v2)
