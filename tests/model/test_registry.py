"""The champion/challenger rule on a real MLflow registry (SQLite in a temp dir)
with real tiny Keras models, and the registered model as an MLflow pyfunc."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.model.architectures import build_model
from pipeline.model.registry import champion_decision, register_model, registry_model_metadata
from tests.conftest import mlflow_store

SIZE = 32
NAME = "chestxray"
PREPROCESSING = {"image_size": SIZE, "fit": "crop"}
BASE_AUC = {f: 0.80 for f in FINDINGS}


def evaluated(mean_auc: float, auc: dict, manifest: str = "test-a") -> dict:
    scores = {"mean_auc": mean_auc, "auc": auc}
    return registry_model_metadata({f: 0.5 for f in FINDINGS}, PREPROCESSING, scores, manifest)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1 champion; v2 better on the mean but Mass drops 0.05; v3 better everywhere;
    v4 better still but scored on another test manifest."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    store = f"sqlite:///{root / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    candidates = [
        evaluated(0.80, BASE_AUC),
        evaluated(0.81, {**BASE_AUC, "Mass": 0.75, "Hernia": 0.90}),
        evaluated(0.82, {f: 0.82 for f in FINDINGS}),
        evaluated(0.90, {f: 0.90 for f in FINDINGS}, manifest="test-b"),
    ]
    decisions = []
    with mlflow_store(store):
        experiment = mlflow.create_experiment("registry-tests", artifact_location=(root / "artifacts").as_uri())
        for metadata in candidates:
            with mlflow.start_run(experiment_id=experiment) as run:
                decisions.append({**register_model(mlflow, model, NAME, metadata, {"data_hash": "d"}),
                                  "run_id": run.info.run_id})
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    return store, client, decisions, model


def test_first_version_is_champion(registry):
    _, _, decisions, _ = registry
    assert decisions[0]["version"] == 1 and decisions[0]["champion"]
    assert "first version" in decisions[0]["reasons"][0]


def test_worse_finding_stays_challenger_with_the_drop_as_reason(registry):
    _, client, decisions, _ = registry
    assert decisions[1]["version"] == 2 and not decisions[1]["champion"]
    assert any("Mass" in r and "0.0500" in r for r in decisions[1]["reasons"])
    tags = client.get_model_version(NAME, "2").tags
    assert tags["champion_decision"] == "challenger" and "Mass" in tags["champion_reasons"]
    assert json.loads(tags["auc"])["Mass"] == 0.75 and tags["test_manifest"] == "test-a"
    run_tags = client.get_run(decisions[1]["run_id"]).data.tags
    assert run_tags["champion_decision"] == "challenger" and run_tags["registry_version"] == "2"


def test_better_version_becomes_champion(registry):
    _, _, decisions, _ = registry
    assert decisions[2]["version"] == 3 and decisions[2]["champion"]
    assert decisions[2]["previous_champion"]["version"] == 1


def test_other_test_manifest_is_not_promoted(registry):
    _, client, decisions, _ = registry
    assert not decisions[3]["champion"] and "different test manifest" in decisions[3]["reasons"][0]
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 3
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 4


def test_rule_without_registry():
    champion = {"version": 1, "mean_auc": 0.8, "auc": BASE_AUC, "test_manifest": "m"}
    equal = {**champion, "version": 2}
    assert champion_decision(equal, champion, 0.02)[0]  # not lower is enough
    small_drop = {**equal, "auc": {**BASE_AUC, "Edema": 0.785}}
    assert champion_decision(small_drop, champion, 0.02)[0]
    lower_mean = {**equal, "mean_auc": 0.79}
    promoted, reasons = champion_decision(lower_mean, champion, 0.02)
    assert not promoted and "mean AUC" in reasons[0]
    assert not champion_decision({**equal, "test_manifest": None}, {**champion, "test_manifest": None}, 0.02)[0]


def load_pyfunc(store: str, uri: str):
    with mlflow_store(store) as mlflow:
        return mlflow.pyfunc.load_model(uri)


def test_champion_loads_as_pyfunc_with_a_column_per_finding(registry):
    store, _, _, model = registry
    pyfunc = load_pyfunc(store, f"models:/{NAME}@champion")
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 1)).astype(np.float32)
    predicted = pyfunc.predict(images)
    assert list(predicted.columns) == list(FINDINGS) and len(predicted) == 3
    np.testing.assert_allclose(predicted.to_numpy(), model(images).numpy(), atol=1e-5)
    assert pyfunc.metadata.metadata["findings"] == list(FINDINGS)
    assert pyfunc.metadata.flavors["python_function"]["artifacts"]["keras_model"]["path"].endswith(".keras")


def test_a_metadata_model_serves_through_pyfunc(tmp_path):
    """Registered with patient metadata: the pyfunc takes {"image", "metadata"},
    the metadata as rows of age/sex/view or encoded, and so does load_model."""
    import pandas as pd

    from pipeline.core.patient import encode_patient_rows
    from pipeline.serve.predict import load_model

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none", use_metadata=True)
    with mlflow_store(store) as mlflow:
        experiment = mlflow.create_experiment("metadata", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            register_model(mlflow, model, NAME, evaluated(0.8, BASE_AUC), {})
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    rows = [{"age": 70, "sex": "M", "view": "AP"}, {"age": 20, "sex": "F", "view": "PA"}]
    expected = model({"image": images, "metadata": encode_patient_rows(rows)}).numpy()
    pyfunc = load_pyfunc(store, f"models:/{NAME}/1")
    for metadata in (pd.DataFrame(rows), rows, encode_patient_rows(rows)):
        predicted = pyfunc.predict({"image": images, "metadata": metadata})
        np.testing.assert_allclose(predicted[list(FINDINGS)].to_numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="trained with patient metadata"):
        pyfunc.predict(images)
    served = load_model(f"models:/{NAME}/1", tracking_uri=store)
    np.testing.assert_allclose(served.predict(images, rows), expected, atol=1e-5)


def test_versions_registered_as_keras_models_before_the_pyfunc_still_load(tmp_path):
    from pipeline.serve.predict import load_model

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    with mlflow_store(store) as mlflow:
        experiment = mlflow.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            mlflow.keras.log_model(model, name="model", registered_model_name=NAME,
                                   metadata=evaluated(0.8, BASE_AUC), pip_requirements=["keras"])
    images = np.random.default_rng(2).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    served = load_model(f"models:/{NAME}/1", tracking_uri=store)
    np.testing.assert_allclose(served.predict(images), model(images).numpy(), atol=1e-5)


# Run in a fresh interpreter with the project's own copy of `pipeline` taken off
# the path (the editable install's finder and any path entry at the project),
# so the only `pipeline` importable is the one the registered model ships.
SERVE_WITH_SHIPPED_CODE_ONLY = """
import importlib.util, json, sys
project = sys.argv[1]
sys.path[:] = [p for p in sys.path if p not in ("", ".", project)]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
                    and not getattr(type(f), "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("pipeline") is None, "the project's pipeline package is still importable"
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[2])
pyfunc = mlflow.pyfunc.load_model(sys.argv[3])
images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
predicted = pyfunc.predict(images)
import pipeline
shipped = sorted(name for name in sys.modules if name == "pipeline" or name.startswith("pipeline."))
print(json.dumps({"columns": list(predicted.columns), "values": predicted.to_numpy().tolist(),
                  "package_file": pipeline.__file__, "loaded": shipped,
                  "phantom_shipped": importlib.util.find_spec("pipeline.phantom") is not None,
                  "data_shipped": importlib.util.find_spec("pipeline.data") is not None}))
"""


def test_registered_model_serves_with_only_its_shipped_code(registry, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    store, _, _, model = registry
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITH_SHIPPED_CODE_ONLY, str(PROJECT_ROOT), store, f"models:/{NAME}@champion"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["columns"] == list(FINDINGS)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(np.array(served["values"]), model(images).numpy(), atol=1e-5)
    assert not served["package_file"].startswith(str(PROJECT_ROOT)), served["package_file"]
    assert not served["phantom_shipped"] and not served["data_shipped"]
    assert "pipeline.serve.pyfunc" in served["loaded"]
