"""The champion/challenger rule on a real MLflow registry (SQLite in a temp dir)
with real tiny Keras models, and the registered model as an MLflow pyfunc."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.model.architectures import build_model
from pipeline.model.registry import register_model, registry_model_metadata
from tests.conftest import mlflow_store

SIZE = 32
NAME = "chestxray"
FIRST = {"promote": True, "rule": "first version", "reasons": ["first"], "champion_version": None, "comparison": None}
PREPROCESSING = {"image_size": SIZE, "fit": "crop"}
BASE_AUC = {f: 0.80 for f in FINDINGS}


def evaluated(mean_auc: float, auc: dict, manifest: str = "test-a", **extra) -> dict:
    scores = {"mean_auc": mean_auc, "auc": auc, **extra}
    return registry_model_metadata({f: 0.5 for f in FINDINGS}, PREPROCESSING, scores, manifest)


def decided(promote: bool, rule: str, reasons: list[str], champion: int | None = None) -> dict:
    return {"promote": promote, "rule": rule, "reasons": reasons, "champion_version": champion, "comparison": None}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1 first (champion); v2 refused by the comparison; v3 promoted; v4 whose
    champion could not be scored (not promoted)."""
    import mlflow

    from pipeline.model.promotion import RULE_FINDING, RULE_FIRST, RULE_NO_CHAMPION_SCORES, RULE_PROMOTED

    root = tmp_path_factory.mktemp("registry")
    store = f"sqlite:///{root / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    candidates = [
        (evaluated(0.80, BASE_AUC), decided(True, RULE_FIRST, ["first version"])),
        (evaluated(0.81, {**BASE_AUC, "Mass": 0.75}), decided(False, RULE_FINDING, ["Mass AUC difference -0.0500"], 1)),
        (evaluated(0.82, {f: 0.82 for f in FINDINGS}), decided(True, RULE_PROMOTED, ["non-inferior"], 1)),
        (evaluated(0.90, {f: 0.90 for f in FINDINGS}),
         decided(False, RULE_NO_CHAMPION_SCORES, ["champion version 3 could not be scored: gone"], 3)),
    ]
    decisions = []
    with mlflow_store(store):
        experiment = mlflow.create_experiment("registry-tests", artifact_location=(root / "artifacts").as_uri())
        for metadata, decision in candidates:
            with mlflow.start_run(experiment_id=experiment) as run:
                decisions.append({**register_model(mlflow, model, NAME, metadata, {"data_hash": "d"}, decision),
                                  "run_id": run.info.run_id})
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    return store, client, decisions, model


def test_first_version_is_champion_until_the_third_takes_the_alias(registry):
    _, client, decisions, _ = registry
    assert decisions[0]["version"] == 1 and decisions[0]["champion"]
    first = client.get_model_version(NAME, "1")
    assert first.tags["decided_at_registration"] == "champion"
    assert first.tags["champion_decision"] == "former champion"
    assert "when version 3 took the alias (non-inferior" in first.tags["champion_until"]
    assert first.description.startswith("> **Now: former champion.** Champion until ")
    assert first.description.count("> **Now:") == 1
    run_tags = client.get_run(first.run_id).data.tags  # the runs table says the same
    assert run_tags["champion_decision"] == "former champion" and run_tags["champion_until"] == \
        first.tags["champion_until"]


def test_exactly_one_version_reads_as_champion(registry):
    _, client, _, _ = registry
    current = {str(v.version): v.tags["champion_decision"] for v in client.search_model_versions(f"name='{NAME}'")}
    assert [v for v, decision in current.items() if decision == "champion"] == ["3"]
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "3"


def test_refused_version_stays_challenger_with_its_reasons(registry):
    _, client, decisions, _ = registry
    assert decisions[1]["version"] == 2 and not decisions[1]["champion"]
    tags = client.get_model_version(NAME, "2").tags
    assert tags["champion_decision"] == "challenger" and tags["champion_reasons"] == "Mass AUC difference -0.0500"
    assert tags["compared_with_champion_version"] == "1" and tags["champion_rule"].startswith("refused")
    assert tags["test_manifest"] == "test-a" and "auc_Mass" not in tags
    run_tags = client.get_run(decisions[1]["run_id"]).data.tags
    assert run_tags["champion_decision"] == "challenger" and run_tags["registry_version"] == "2"


def test_promoted_version_becomes_champion(registry):
    _, _, decisions, _ = registry
    assert decisions[2]["version"] == 3 and decisions[2]["champion"] and decisions[2]["compared_with"] == 1


def test_unscored_champion_means_no_promotion(registry):
    _, client, decisions, _ = registry
    assert not decisions[3]["champion"] and "could not be scored" in decisions[3]["reasons"][0]
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 3
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 4


def promote(store: str, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pipeline.model.registry", "promote", *args,
                           "--tracking-uri", store], capture_output=True, text=True, timeout=300)


def test_manual_promotion_is_logged_and_refuses_a_version_that_does_not_load(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    from pipeline.model.promotion import RULE_FIRST, RULE_MEAN

    with mlflow_store(store):
        experiment = mlflow.create_experiment("manual", artifact_location=(tmp_path / "artifacts").as_uri())
        for decision in (decided(True, RULE_FIRST, ["first"]), decided(False, RULE_MEAN, ["worse"], 1)):
            with mlflow.start_run(experiment_id=experiment):
                register_model(mlflow, model, NAME, evaluated(0.8, BASE_AUC), {}, decision)
    result = promote(store, "2", "--reason", "reviewed by radiology")
    assert result.returncode == 0, result.stderr
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion_reason"] == "reviewed by radiology" and tags["promoted_by"]
    assert tags["champion_rule"] == "manual promotion" and tags["compared_with_champion_version"] == "1"
    assert tags["champion_reasons"].endswith("reviewed by radiology")
    assert tags["decided_at_registration"] == "challenger"
    promoted = client.get_model_version(NAME, "2").description
    assert promoted.startswith("> **Now: champion.** Promoted by hand by ") and "reviewed by radiology" in promoted
    former = client.get_model_version(NAME, "1")
    assert former.tags["champion_decision"] == "former champion"
    assert "when version 2 took the alias (manual promotion by " in former.tags["champion_until"]
    assert former.description.startswith("> **Now: former champion.**")
    result = promote(store, "1", "--reason", "back to the first")
    assert result.returncode == 0, result.stderr
    back = client.get_model_version(NAME, "1")
    assert back.tags["champion_decision"] == "champion" and "champion_until" not in back.tags
    assert "champion_until" not in client.get_run(back.run_id).data.tags
    assert client.get_run(client.get_model_version(NAME, "2").run_id).data.tags["champion_decision"] == \
        "former champion"
    assert back.description.startswith("> **Now: champion.**") and back.description.count("> **Now:") == 1
    assert client.get_model_version(NAME, "2").tags["champion_decision"] == "former champion"
    missing = promote(store, "7", "--reason", "typo")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("promote: error: not promoted: models:/chestxray/7")
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1  # unchanged


COMPARISON = {
    "test_images": 300, "test_patients": 120, "resamples": 200,
    "mean_auc_diff": 0.0123456, "mean_auc_diff_ci": [-0.00512345, 0.0298765],
    "auc_diff": {f: 0.0123456 for f in FINDINGS}, "auc_diff_ci": {f: [-0.02, 0.04] for f in FINDINGS},
    "champion_auc": {f: 0.7 for f in FINDINGS}, "champion_mean_auc": 0.7,
    "mean_ece": {"champion": 0.1234, "challenger": 0.0456},
    "operating_points": {"champion": {"sensitivity": {f: 0.61 for f in FINDINGS},
                                      "specificity": {f: 0.72 for f in FINDINGS}},
                         "challenger": {"sensitivity": {f: 0.83 for f in FINDINGS},
                                        "specificity": {f: 0.94 for f in FINDINGS}}},
}


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    """One version registered with full metrics (CI, test size), training params
    as a JSON tag (as the evaluate stage passes them) and a champion comparison."""
    import mlflow

    from pipeline.model.promotion import RULE_PROMOTED

    root = tmp_path_factory.mktemp("described")
    store = f"sqlite:///{root / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    auc = {f: 0.7123456789 + 0.01 * i for i, f in enumerate(FINDINGS)}
    metadata = evaluated(0.7654321987, auc, "abc123manifest", mean_auc_ci=[0.7512345, 0.7798765], test_images=300,
                         test_patients=120, test_positives={f: 20 + i for i, f in enumerate(FINDINGS)},
                         auc_ci_low={f: 0.6 for f in FINDINGS}, auc_ci_high={f: 0.9 for f in FINDINGS},
                         sensitivity={f: 0.8 for f in FINDINGS}, specificity={f: 0.9 for f in FINDINGS},
                         threshold_method="youden")
    metadata = {**metadata, "data_source": "phantom"}
    decision = {"promote": True, "rule": RULE_PROMOTED, "reasons": ["mean AUC difference CI above -margin"],
                "champion_version": 1, "comparison": COMPARISON}
    with mlflow_store(store):
        experiment = mlflow.create_experiment("described", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            register_model(mlflow, model, NAME, metadata,
                           {"data_hash": "d"}, decision, params={"lr": 0.001, "epochs": 3})
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    return store, client, client.get_model_version(NAME, "1"), run.info.run_id


def test_version_description_has_mean_auc_ci_test_set_findings_and_comparison(described):
    _, _, version, _ = described
    text = version.description
    assert "Test mean AUC 0.765" in text and "95% CI 0.751 to 0.780" in text
    assert "abc123manifest" in text and "300 images of 120 patients" in text
    assert "**Data: synthetic chest phantom (ingest.source phantom). Synthetic phantom: these figures say nothing " \
           "about clinical performance.**" in text
    gap = "&emsp;"
    assert (f"| Finding{gap} | Test positives{gap} | AUC{gap} | 95% CI{gap} | Threshold{gap} | Sensitivity{gap} "
            "| Specificity |") in text
    for i, finding in enumerate(FINDINGS):
        assert (f"| {finding}{gap} | {20 + i}{gap} | {0.7123456789 + 0.01 * i:.3f}{gap} | 0.600 to 0.900{gap} "
                f"| 0.500{gap} | 0.80{gap} | 0.90 |") in text
    assert "Thresholds chosen on the validation split by youden" in text
    assert "Compared with champion version 1" in text and "300 test images, 120 patients" in text
    assert f"| Mass{gap} | 0.700{gap} |" in text and f"+0.0123{gap} | -0.0200 to +0.0400 |" in text
    assert "-0.0051 to +0.0299" in text
    assert "champion 0.123, this version 0.046" in text
    assert f"| Mass{gap} | 0.61{gap} | 0.83{gap} | 0.72{gap} | 0.94 |" in text
    assert "**Decision at registration:** **champion**: this version took the `champion` alias. Rule: non-inferior" \
        in text and "- mean AUC difference CI above -margin." in text
    assert "0.7123456789" not in text and "0.76543" not in text and '["' not in text


def test_a_version_says_what_changed_from_the_champion_it_was_compared_with(tmp_path):
    import mlflow

    from pipeline.model.promotion import RULE_MEAN

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    params = {"train": {"epochs": 3, "learning_rate": 0.001}}
    runs = [({"data_hash": "d1", "git_commit": "c1"}, params, FIRST),
            ({"data_hash": "d1", "git_commit": "c1"}, params, decided(False, RULE_MEAN, ["worse"], 1)),
            ({"data_hash": "d2", "git_commit": "c1"}, {"train": {"epochs": 5, "learning_rate": 0.001}},
             decided(False, RULE_MEAN, ["worse"], 1))]
    with mlflow_store(store):
        experiment = mlflow.create_experiment("changes", artifact_location=(tmp_path / "artifacts").as_uri())
        for tags, run_params, decision in runs:
            with mlflow.start_run(experiment_id=experiment):
                register_model(mlflow, model, NAME, evaluated(0.8, BASE_AUC), tags, decision, params=run_params)
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    assert "What changed from champion" not in client.get_model_version(NAME, "1").description
    rerun = client.get_model_version(NAME, "2").description
    assert "## What changed from champion version 1" in rerun
    assert "Nothing: the same params, data and code as version 1. This version is a re-run" in rerun
    changed = client.get_model_version(NAME, "3").description
    assert "- param `train.epochs`: 3 → 5" in changed and "learning_rate" not in changed
    assert "- data (hash of the TFRecord shards): `d1` → `d2`" in changed and "code (git commit)" not in changed


def test_version_tags_are_rounded_and_few_without_json_blobs(described):
    _, client, version, run_id = described
    tags = version.tags
    assert tags["mean_auc"] == "0.765" and tags["mean_auc_ci"] == "[0.751, 0.780]" and tags["test_images"] == "300"
    assert tags["test_patients"] == "120" and tags["data_source"] == "phantom"
    assert not any(key.startswith(("auc_", "threshold_")) for key in tags)  # the description's table has them
    assert len(tags) <= 15, sorted(tags)
    assert not {"auc", "params", "thresholds"} & set(tags)
    assert not any(value.lstrip().startswith(("{", "[{", '["')) for value in tags.values())
    assert tags["data_hash"] == "d" and tags["test_manifest"] == "abc123manifest"
    import mlflow

    with mlflow_store(described[0]):
        params = mlflow.artifacts.load_dict(f"runs:/{run_id}/params.json")
    assert params == {"lr": 0.001, "epochs": 3}


def test_signature_takes_films_and_names_the_answer_columns(described):
    """Films in (binary `image`, base64 over REST; optional age, sex, view), and
    per film the fourteen probabilities, the positive findings, the version and the error."""
    store, _, _, _ = described
    from mlflow.models import get_model_info

    with mlflow_store(store):
        signature = get_model_info(f"models:/{NAME}/1").signature
    assert signature.outputs.input_names() == [*FINDINGS, "findings", "model_name", "model_version", "error"]
    assert all(spec.type.name == "double" for spec in signature.outputs.inputs[:len(FINDINGS)])
    inputs = {spec.name: (repr(spec.type), spec.required) for spec in signature.inputs.inputs}
    assert inputs == {"image": ("binary", True), "age": ("Any", False), "sex": ("string", False),
                      "view": ("string", False)}


def test_mlmodel_records_no_temporary_path(described):
    store, _, _, _ = described
    import mlflow

    with mlflow_store(store):
        text = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1/MLmodel")
    with open(text) as handle:
        mlmodel = handle.read()
    assert "cxr-register" not in mlmodel and "uri: runs:/" in mlmodel
    # The test's own tracking store lies under pytest's /tmp: its location (the
    # MLmodel's artifact_path) may appear, no other temporary path may.
    store_root = str(Path(store.removeprefix("sqlite:///")).parent)
    assert "/tmp/" not in mlmodel.replace(store_root, "<store>")


def load_pyfunc(store: str, uri: str):
    with mlflow_store(store) as mlflow:
        return mlflow.pyfunc.load_model(uri)


def test_champion_loads_as_pyfunc_with_a_column_per_finding(registry):
    store, _, _, model = registry
    pyfunc = load_pyfunc(store, f"models:/{NAME}@champion")
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 1)).astype(np.float32)
    predicted = pyfunc.predict({"image": images})
    assert list(predicted.columns)[:len(FINDINGS)] == list(FINDINGS) and len(predicted) == 3
    np.testing.assert_allclose(predicted[list(FINDINGS)].to_numpy(dtype=float), model(images).numpy(), atol=1e-5)
    assert set(predicted["model_version"]) == {"3"} and set(predicted["model_name"]) == {NAME}
    assert pyfunc.metadata.metadata["findings"] == list(FINDINGS)
    assert pyfunc.metadata.flavors["python_function"]["artifacts"]["keras_model"]["path"].endswith(".keras")


def test_a_metadata_model_serves_through_pyfunc(tmp_path):
    """Registered with patient metadata: the pyfunc takes each film's age, sex
    and view as columns beside it, and so does load_model; a film without them
    (a PNG has no header to fall back on) is that film's error."""
    import pandas as pd

    from pipeline.core.patient import encode_patient_rows
    from pipeline.serve.predict import load_model

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none", use_metadata=True)
    with mlflow_store(store) as mlflow:
        experiment = mlflow.create_experiment("metadata", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            register_model(mlflow, model, NAME, evaluated(0.8, BASE_AUC), {}, FIRST)
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    rows = [{"age": 70, "sex": "M", "view": "AP"}, {"age": 20, "sex": "F", "view": "PA"}]
    expected = model({"image": images, "metadata": encode_patient_rows(rows)}).numpy()
    pyfunc = load_pyfunc(store, f"models:/{NAME}/1")
    assert [spec.name for spec in pyfunc.metadata.signature.inputs.inputs] == ["image", "age", "sex", "view"]
    predicted = pyfunc.predict(pd.DataFrame({"image": list(images), **pd.DataFrame(rows).to_dict("list")}))
    np.testing.assert_allclose(predicted[list(FINDINGS)].to_numpy(dtype=float), expected, atol=1e-5)
    unknown_age = pyfunc.predict(pd.DataFrame({"image": list(images), "age": [None, 20], "sex": ["M", "F"],
                                               "view": ["AP", "PA"]}))
    assert unknown_age["error"].isna().all()
    # called directly (MLflow would drop the `metadata` key), the earlier {"image", "metadata"} form still works
    direct = pyfunc.unwrap_python_model().predict(None, {"image": images, "metadata": encode_patient_rows(rows)})
    np.testing.assert_allclose(direct[list(FINDINGS)].to_numpy(dtype=float), expected, atol=1e-5)
    no_metadata = pyfunc.predict({"image": images})
    assert list(no_metadata["error"]) == ["patient metadata: no sex or view for a PNG/JPEG (a DICOM carries them in "
                                          "its header): give the film's age, sex and view columns"] * 2
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
answer = pyfunc.predict({"image": images})
predicted = answer[list(answer.columns[:14])].astype(float)  # the probabilities
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


def test_the_description_table_shows_no_sensitivity_on_too_few_films():
    from pipeline.model.version_notes import TOO_FEW, finding_rows

    metadata = evaluated(0.8, {**BASE_AUC, "Hernia": None}, auc_missing_reason={"Hernia": "too few positives (n=2)"},
                         test_positives={**{f: 20 for f in FINDINGS}, "Hernia": 2}, test_images=70,
                         sensitivity={f: 1.0 for f in FINDINGS}, specificity={f: 0.9 for f in FINDINGS},
                         min_positives=10)
    rows = {row[0]: row for row in finding_rows(metadata)}
    assert rows["Hernia"][1:] == ["2", "too few positives (n=2)", "–", "0.500", TOO_FEW, "0.90"]
    assert rows["Mass"][5:] == ["1.00", "0.90"]


def test_the_serving_copy_imports_without_the_project(tmp_path):
    """What travels with a registered model (code_paths) is found from the
    pyfunc's imports, not kept by hand: the copy alone imports the pyfunc."""
    import subprocess
    import sys

    from pipeline.model.registry import serving_modules, serving_package

    copy = serving_package(tmp_path)
    assert "serve/pyfunc.py" in serving_modules() and "core/recalibration.py" in serving_modules()
    probe = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import pipeline.serve.pyfunc as p; "
             f"assert p.__file__.startswith({str(copy)!r}), p.__file__; "
             f"assert all(m.__file__.startswith({str(copy)!r}) for n, m in sys.modules.items() "
             f"if n.startswith('pipeline') and getattr(m, '__file__', None))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
