"""What is served is what was reported: a model registered by the evaluate
stage under each evaluate.calibration (none, platt, isotonic) gives, through
`cxr predict --json`, load_model(...).predict and the MLflow pyfunc, every
finding exactly the sensitivity and specificity the stage reports on its
test films (the same decision for the same film, whatever the path)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import operating_point_metrics
from pipeline.data.manifest import MANIFEST_COLUMNS
from pipeline.records.preprocess import write_tfrecord_shards
from tests.conftest import project_settings, write_png

pytestmark = pytest.mark.slow

SIZE = 32
FILMS = 160
CALIBRATIONS = ("none", "platt", "isotonic")


def film_manifest(root, n: int) -> pd.DataFrame:
    """n PNGs of smooth random blobs (a small CNN scores them differently),
    random labels at 30%, one film a patient; 50% train, 25% val, 25% test."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0:48, 0:48]
    for k in range(n):
        cy, cx, r = rng.uniform(8, 40), rng.uniform(8, 40), rng.uniform(4, 14)
        image = 60 + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) + rng.normal(0, 12, (48, 48))
        image_id = f"{k:08d}_000.png"
        path = write_png(root / image_id, np.clip(image, 0, 255).astype(np.uint8))
        labels = {f: int(rng.random() < 0.3) for f in FINDINGS}
        split = "train" if k < n // 2 else "val" if k < 3 * n // 4 else "test"
        rows.append({"image_id": image_id, "path": str(path), "patient_id": k + 1, "follow_up": 0, "age": 50,
                     "sex": "F" if k % 2 else "M", "view": "PA", "finding_labels": "No Finding", **labels,
                     "split": split})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype({"age": "Int64"})


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One registered model per calibration method, each evaluated by the stage's own function."""
    import mlflow

    from pipeline.model.architectures import build_model
    from pipeline.model.evaluate import evaluate_model

    root = tmp_path_factory.mktemp("served")
    manifest = film_manifest(root / "films", FILMS)
    shards = root / "tfrecords"
    shards.mkdir()
    index, _ = write_tfrecord_shards(manifest, shards, SIZE, shard_size=50)
    (shards / "index.json").write_text(json.dumps(index))
    model_file = root / "model.keras"
    build_model("small_cnn", SIZE, "none").save(model_file)
    store = f"sqlite:///{root / 'mlflow.db'}"
    training = {"backbone": "small_cnn", "image_size": SIZE, "fit": "crop", "params": {"seed": 0}}
    reports = {}
    try:
        mlflow.set_tracking_uri(store)
        for method in CALIBRATIONS:
            settings = project_settings(**{
                "evaluate.threshold_method": "youden", "evaluate.bootstrap": 20, "evaluate.calibration": method,
                "evaluate.batch_size": 8, "evaluate.promotion.resamples": 20,
                "mlflow.experiment": "served", "mlflow.registered_model": f"served-{method}"})
            reports[method] = evaluate_model(model_file, shards, root / f"reports-{method}", root / f"plots-{method}",
                                             root / "no_run.json", settings.evaluate, settings.mlflow, training, seed=0)
    finally:
        mlflow.set_tracking_uri(None)  # configure_mlflow set it process-wide
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    return store, reports, test


def calls_of(findings_per_film: list[list[str]]) -> np.ndarray:
    return np.array([[f in called for f in FINDINGS] for called in findings_per_film])


def assert_reported(calls: np.ndarray, test: pd.DataFrame, report: dict, path: str) -> None:
    """The served calls give exactly the reported sensitivity and specificity, finding by finding."""
    labels = test[list(FINDINGS)].to_numpy()
    # 1.0 for a call, 0.0 otherwise, at a threshold of 0.5: the same counts as the served calls
    served = operating_point_metrics(labels, calls.astype(float), {f: 0.5 for f in FINDINGS})
    for finding in FINDINGS:
        assert served["sensitivity"][finding] == report["sensitivity"][finding], (path, finding)
        assert served["specificity"][finding] == report["specificity"][finding], (path, finding)


@pytest.mark.parametrize("method", CALIBRATIONS)
def test_every_path_gives_the_reported_operating_point(registered, method, capsys):
    import mlflow

    from pipeline.serve.cli import main as cxr_main
    from pipeline.serve.predict import load_model

    store, reports, test = registered
    report = reports[method]
    uri = f"models:/served-{method}@champion"
    assert (report["calibration"]["method"] == method) and ("fitted" in report["calibration"]) == (method != "none")

    capsys.readouterr()
    assert cxr_main(["predict", *test["path"], "--json", "--model", uri, "--tracking-uri", store]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in answers] == list(test["path"])
    assert_reported(calls_of([a["findings"] for a in answers]), test, report, "cxr predict --json")

    model = load_model(uri, tracking_uri=store)
    probabilities = model.predict(np.stack([model.preprocess(p) for p in test["path"]]))
    assert probabilities.dtype == np.float64
    assert_reported(calls_of([model.positive_findings(p) for p in probabilities]), test, report, "load_model")

    mlflow.set_tracking_uri(store)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(None)
    # the films' own bytes, as the model server takes them (pipeline.serve.pyfunc), as many a request as it allows
    films = [Path(p).read_bytes() for p in test["path"]]
    most = pyfunc.metadata.metadata["serving"]["max_films_per_request"]
    frame = pd.concat([pyfunc.predict(pd.DataFrame({"image": films[start:start + most]}))
                       for start in range(0, len(films), most)], ignore_index=True)
    assert frame["error"].isna().all()
    assert_reported(calls_of(list(frame["findings"])), test, report, "pyfunc")
    # and the same probabilities as load_model, to the bit
    np.testing.assert_array_equal(frame[list(FINDINGS)].to_numpy(dtype=np.float64), probabilities)
