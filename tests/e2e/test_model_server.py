"""The champion behind MLflow's own model server: `cxr serve` resolves the
alias and runs a real `mlflow models serve` on 127.0.0.1; films are posted
as users have them (real NIH PNGs from ../shared, a 12-bit DICOM, a lateral
DICOM, a truncated file, a JPEG and a JPEG 2000 DICOM) in one request,
base64 in MLflow's JSON."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from pipeline.core.labels import FINDINGS
from pipeline.model.architectures import build_model
from pipeline.model.registry import register_model, registry_model_metadata
from pipeline.serve.cli import main as cxr_main
from pipeline.serve.predict import load_model
from tests.conftest import NIH_SUBSET, free_port, mlflow_store, require_shared
from tests.data.test_dicom import compressed, dicom_bytes
from tests.e2e.project import pipeline_env
from tests.e2e.test_mlflow_server import stop
from tests.model.test_cli_inputs import grey_of, write_dicom
from tests.model.test_predict import SIZE, THRESHOLDS, nih_images

pytestmark = pytest.mark.slow

NAME = "chestxray"
START_TIMEOUT_S = 180.0
# The figure: the server's probabilities are cxr predict's to this much.
SAME_PROBABILITY = 1e-6
SERVING = {"max_films_per_request": 8, "max_film_mb": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store where chestxray version 1 (a small_cnn) is the champion, with SERVING's limits."""
    import mlflow

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    metadata = registry_model_metadata(THRESHOLDS, {"image_size": SIZE, "fit": "crop"}, {"mean_auc": 0.5},
                                       serving=SERVING)
    with mlflow_store(uri):
        experiment = mlflow.create_experiment("served", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            register_model(mlflow, build_model("small_cnn", SIZE, "none"), NAME, metadata, {},
                           {"promote": True, "rule": "first version", "reasons": ["first"], "champion_version": None,
                            "comparison": None})
    return uri


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    require_shared(NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz", "real NIH subset")
    folder = tmp_path_factory.mktemp("films")
    rgba, first, second = nih_images(NIH_SUBSET, gray=2)
    truncated = folder / "truncated.png"
    truncated.write_bytes(second.read_bytes()[:20_000])
    jpeg = folder / "film.jpg"
    assert cv2.imwrite(str(jpeg), grey_of(rgba))
    jpeg2000 = folder / "j2k.dcm"
    jpeg2000.write_bytes(dicom_bytes(compressed(JPEG2000Lossless)(grey_of(first))))
    return {
        "nih_rgba": rgba, "nih_grey": first, "jpeg": jpeg, "dicom_jpeg2000": jpeg2000,
        # a 12-bit detector: stored = 16 v + 8, rescaled and windowed back to v
        "dicom12": write_dicom(folder / "detector12.dcm", grey_of(second).astype(np.uint16) * 16 + 8, "MONOCHROME2",
                               12, RescaleSlope=0.0625, RescaleIntercept=-0.5, WindowCenter=128, WindowWidth=256,
                               ViewPosition="AP"),
        "lateral": write_dicom(folder / "lateral.dcm", grey_of(first), "MONOCHROME2", 8, ViewPosition="LL"),
        "truncated": truncated,
    }


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`cxr serve` for the champion on a free port of 127.0.0.1, once it answers /ping."""
    folder = tmp_path_factory.mktemp("server")
    port, log = free_port(), folder / "serve.log"
    command = [str(Path(sys.executable).parent / "cxr"), "serve", "--tracking-uri", store, "--port", str(port)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=folder, env=pipeline_env(), stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"cxr serve exited ({process.returncode}): {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the model server did not answer in {START_TIMEOUT_S:.0f}s: {log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, log
    finally:
        stop(process)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def film_request(paths: list[Path]) -> dict:
    return {"dataframe_split": {"columns": ["image"],
                                "data": [[base64.b64encode(path.read_bytes()).decode("ascii")] for path in paths]}}


def test_one_request_of_mixed_films_answers_as_cxr_predict(server, store, films, capsys):
    url, log = server
    assert "= version 1 on http://127.0.0.1:" in log.read_text()  # cxr serve said what it serves
    paths = list(films.values())
    status, answer = post(url, film_request(paths))
    assert status == 200, answer
    served = answer["predictions"]
    assert len(served) == len(paths)

    capsys.readouterr()
    assert cxr_main(["predict", *map(str, paths), "--json", "--tracking-uri", store]) == 1  # two films refused
    expected = json.loads(capsys.readouterr().out)
    by_name = dict(zip(films, zip(served, expected)))
    for name in ("nih_rgba", "nih_grey", "jpeg", "dicom_jpeg2000", "dicom12"):
        row, cli = by_name[name]
        assert row["error"] is None, (name, row["error"])
        difference = np.abs(np.array([row[f] for f in FINDINGS]) - [cli["probabilities"][f] for f in FINDINGS])
        assert difference.max() <= SAME_PROBABILITY, (name, difference.max())
        assert row["findings"] == cli["findings"]
        assert (row["model_name"], row["model_version"]) == (NAME, "1") and cli["model_version"] == "1"
    # the answering version is the champion the alias history names for the moment of the answer
    import mlflow

    from pipeline.model.alias_history import holder_at, now_ms, read_history

    history = read_history(mlflow.MlflowClient(tracking_uri=store, registry_uri=store), NAME)
    assert str(holder_at(history, "champion", now_ms())) == served[0]["model_version"]
    lateral, _ = by_name["lateral"]
    assert lateral["error"] == "lateral view (ViewPosition LL): the model was trained on frontal PA/AP films"
    truncated, cli_truncated = by_name["truncated"]
    assert truncated["error"] == cli_truncated["error"] and "truncated" in truncated["error"]
    for row in (lateral, truncated):
        assert all(row[f] is None for f in FINDINGS) and row["findings"] == []


def test_the_limits_refuse_a_film_or_a_request_and_say_which(server, films, tmp_path):
    url, _ = server
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8)  # ~3.8 MiB as PNG
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), noise)
    status, answer = post(url, film_request([big, films["nih_grey"]]))
    assert status == 200
    over, fine = answer["predictions"]
    assert over["error"] == f"{big.stat().st_size} bytes is over the limit of {3 * 2**20} for one film " \
                            "(no film within 100000000 pixels is this large)"
    assert fine["error"] is None
    status, answer = post(url, film_request([films["nih_grey"]] * (SERVING["max_films_per_request"] + 1)))
    assert status == 400
    assert "9 films in one request; this model version takes at most 8" in answer["message"]


def test_preprocessed_films_still_go_in(server, store, films):
    """The tensor input of earlier versions, over REST: the same probabilities as load_model."""
    url, _ = server
    model = load_model(f"models:/{NAME}/1", tracking_uri=store)
    images = np.stack([model.preprocess(films["nih_grey"]), model.preprocess(films["dicom12"])])
    status, answer = post(url, {"inputs": {"image": images.tolist()}})
    assert status == 200, answer
    served = np.array([[row[f] for f in FINDINGS] for row in answer["predictions"]])
    np.testing.assert_allclose(served, model.predict(images), atol=SAME_PROBABILITY)
