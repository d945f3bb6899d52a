"""End to end: the real DVC pipeline in a temp git repo, on a tiny configuration."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import ABOVE_EVERY_SCORE
from pipeline.model.leakage import patient_hash
from pipeline.model.promotion import RULE_LEAKAGE
from tests.e2e.project import TINY, dvc, experiment_revisions, make_project, pipeline_env, queue_env, run, run_queue

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    project = make_project(tmp_path_factory.mktemp("e2e") / "project", TINY)
    return project, run(["dvc", "repro"], project)


def test_every_stage_writes_its_outputs(repro):
    project, result = repro
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "explain"):
        assert f"Running stage '{stage}'" in result.stdout + result.stderr
    phantom = project / "data" / "ingest" / "phantom"
    assert len(list((phantom / "images").glob("*.png"))) == 90
    assert (phantom / "Data_Entry_2017.csv").is_file() and (phantom / "BBox_List_2017.csv").is_file()
    assert (project / "data" / "validated" / "manifest.csv").is_file()
    index = json.loads((project / "data" / "tfrecords" / "index.json").read_text())
    assert sum(s["records"] for s in index["shards"]) == 90
    assert {s["split"] for s in index["shards"]} == {"train", "val", "test"}
    assert (project / "models" / "model.keras").stat().st_size > 0
    overlays = list((project / "reports" / "gradcam").glob("*.png"))
    assert overlays, "explain wrote no Grad-CAM overlay"
    assert (project / "reports" / "gradcam" / "index.html").is_file()


def test_explain_gallery_and_localisation_scores(repro):
    project, result = repro
    metrics = json.loads((project / "reports" / "gradcam" / "explain.json").read_text())
    summary = json.loads((project / "metrics" / "explain.json").read_text())
    localisation = metrics["localisation"]
    overall = localisation["overall"]
    assert overall["n"] > 0, "no boxed test image was scored"
    for key in ("pointing_game", "iobb_0.1", "iobb_0.25", "iobb_0.5"):
        assert 0.0 <= overall[key] <= 1.0 and 0.0 <= overall[f"{key}_random"] <= 1.0
    assert summary == {"pointing_game": round(overall["pointing_game"], 4),
                       "pointing_random": round(overall["pointing_game_random"], 4)}
    assert list(localisation["per_finding"]) == list(FINDINGS)
    assert sum(s["n"] for s in localisation["per_finding"].values()) == overall["n"]
    gradcam = project / "reports" / "gradcam"
    scored = (gradcam / "localisation.csv").read_text().splitlines()[1:]
    assert len(scored) == overall["n"] and len({line.split(",")[0] for line in scored}) <= 10  # the cap
    overlays = sorted(p.name for p in gradcam.glob("*.png"))
    gallery = metrics["gallery"]
    assert len(overlays) == gallery["true_positives"] + gallery["false_positives"] + gallery["false_negatives"]
    assert all(gallery[kind] <= len(FINDINGS) for kind in ("true_positives", "false_positives", "false_negatives"))
    page = (gradcam / "index.html").read_text()
    assert page.count('src="data:image/jpeg;base64,') == len(overlays)
    assert "http:" not in page and "https:" not in page and "<script" not in page
    assert 'id="synthetic"' in page  # the phantom's films, said so on the page
    assert "pointing game" in (result.stdout + result.stderr)


def test_metrics_files_hold_scalars_and_reports_the_detail(repro):
    """DVC shows every metrics key as a column: the files hold a short scalar
    summary, so `dvc metrics show` fits a wide terminal, and the detail is
    in each stage's report JSON under the same key names."""
    project, _ = repro
    summaries = {p.stem: json.loads(p.read_text()) for p in (project / "metrics").glob("*.json")}
    assert set(summaries) == {"ingest", "validate", "preprocess", "train", "evaluate", "explain"}
    for stage, summary in summaries.items():
        assert all(v is None or isinstance(v, int | float) for v in summary.values()), (stage, summary)
    detail = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    low, high = detail["mean_auc_ci"]
    assert summaries["evaluate"] == {"mean_auc": round(detail["mean_auc"], 4), "auc_ci_low": round(low, 4),
                                     "auc_ci_high": round(high, 4),
                                     "mean_ece": round(detail["calibration"]["mean_ece"], 4)}
    assert set(detail["subgroups"]) >= {"sex", "age", "view", "sex_age", "gaps"}
    assert set(detail["calibration"]["ece"]) == set(FINDINGS)
    assert summaries["train"]["best_val_auc"] == round(
        json.loads((project / "reports" / "train.json").read_text())["best_val_auc"], 4)
    ingest = json.loads((project / "reports" / "ingest.json").read_text())
    assert summaries["ingest"] == {"images": ingest["manifest_rows"]} and ingest["patients"] > 0
    shown = run(["dvc", "metrics", "show"], project).stdout.splitlines()
    # 14 scalar columns (validate's data-quality counts among them) in a 210-column terminal
    assert len(shown) == 7 and max(len(line.rstrip()) for line in shown) <= 210, shown
    changed = run(["dvc", "metrics", "diff", "--all"], project).stdout
    assert "metrics/evaluate.json" in changed and "mean_auc" in changed


def test_evaluation_report_shape(repro):
    project, _ = repro
    metrics = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    assert isinstance(metrics["mean_auc"], float) and 0.0 <= metrics["mean_auc"] <= 1.0
    assert list(metrics["auc"]) == list(FINDINGS) and list(metrics["thresholds"]) == list(FINDINGS)
    # a threshold is a probability, or Youden's "call nothing" just above 1.0 (named in the report)
    assert all(0.0 <= t <= 1.0 or (t == ABOVE_EVERY_SCORE and f in metrics["thresholds_call_nothing"])
               for f, t in metrics["thresholds"].items())
    defined = [v for v in metrics["auc"].values() if v is not None]
    assert abs(sum(defined) / len(defined) - metrics["mean_auc"]) < 1e-9
    low, high = metrics["mean_auc_ci"]
    assert low <= metrics["mean_auc"] <= high
    assert list(metrics["auprc"]) == list(FINDINGS) and 0.0 <= metrics["exact_match_accuracy"] <= 1.0
    reports = project / "reports" / "evaluate"
    assert (reports / "model_card.html").is_file()
    assert {p.stem for p in (project / "reports" / "plots" / "roc").glob("*.csv")} <= set(FINDINGS)
    plots = run(["dvc", "plots", "show", "--json"], project)
    assert "plots/roc/" in plots.stdout and "plots/pr/" in plots.stdout


def test_model_registered_with_champion_and_metrics_in_mlflow(repro):
    project, _ = repro
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'chestxray'")
    assert len(versions) == 1
    champion = client.get_model_version_by_alias("chestxray", "champion")
    assert champion.version == versions[0].version
    assert client.get_model_version_by_alias("chestxray", "challenger").version == champion.version
    tags = {"git_commit", "data_hash", "mean_auc", "test_manifest", "champion_decision", "decided_at_registration",
            "data_source", "test_patients"}
    assert tags <= set(champion.tags) and champion.tags["champion_decision"] == "champion"
    assert not {"auc", "params", "thresholds"} & set(champion.tags) and "Test mean AUC" in champion.description
    evaluate = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    assert evaluate["registry"]["champion"] and evaluate["registry"]["version"] == int(champion.version)
    assert champion.tags["test_manifest"] == evaluate["test_manifest"]
    run = client.get_run(champion.run_id)
    for finding in FINDINGS:
        assert f"threshold_{finding}" in run.data.metrics
    assert "test_mean_auc_ci_low" in run.data.metrics and run.data.tags["champion_decision"] == "champion"
    assert "model_card.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"git_commit", "data_hash"} <= set(run.data.tags)
    assert any(f"test_auc_{f}" in run.data.metrics for f in FINDINGS)
    explain = {"explain_pointing_game", "explain_pointing_game_random", "explain_iobb_0.25"}
    assert explain <= set(run.data.metrics)
    assert "gradcam/index.html" in {a.path for a in client.list_artifacts(run.info.run_id, "gradcam")}
    # the champion carries its test films' profile, what `cxr monitor` compares new films with
    from pipeline.monitor.reference import read_reference
    from pipeline.serve.predict import load_model

    served = load_model("models:/chestxray@champion", tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    written = read_reference(project / "reports" / "evaluate" / "reference_profile.json")
    assert served.reference == written and written["films"] == evaluate["test_images"]
    assert written["split"] == "test" and written["data_source"] == "phantom" and not written["not_profiled"]
    assert len(written["patients"]) == written["films"] and None not in written["patients"]
    assert evaluate["reference_profile"] == {"films": written["films"], "split": "test", "not_profiled": 0}


LIBRARY_NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "E0000", "I0000", "W0000", "Warning:",
                 "UserWarning", "FutureWarning", "DeprecationWarning", "Downloading artifacts",
                 "Creating initial MLflow database", "INFO mlflow", "WARNING mlflow", "Traceback",
                 "Successfully registered model", "Created version")


def test_stages_print_their_own_lines_only(repro):
    """No TensorFlow/absl/oneDNN lines, MLflow warnings or progress bars in a
    run's output; each figure at 3-4 significant digits."""
    _, result = repro
    output = result.stdout + result.stderr
    assert not [noise for noise in LIBRARY_NOISE if noise in output], output
    evaluate_line = next(line for line in output.splitlines() if line.startswith("evaluate: mean AUC"))
    assert re.match(r"evaluate: mean AUC \d\.\d{3} over \d+ findings on \d+ test images of \d+ patients",
                    evaluate_line), evaluate_line


def test_second_repro_runs_nothing(repro):
    project, _ = repro
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout + again.stderr
    status = run(["dvc", "status"], project)
    assert "up to date" in status.stdout.lower(), status.stdout


def test_invalid_metadata_stops_the_pipeline_at_validate(tmp_path):
    """A sex GE refuses and an unknown finding ingest rejects: both named in one
    run, which stops at validate; NIH's age typo (414) is kept as missing."""
    from tests.conftest import make_nih_root

    rows = [(f"{p:08d}_000.png", "Mass" if p % 2 else "No Finding", 0, p, 40, "F", "PA") for p in range(1, 13)]
    rows[4] = ("00000005_000.png", "Effusion", 0, 5, 414, "M", "PA")  # an age like those in NIH's 2017 CSV
    rows[6] = ("00000007_000.png", "Mass", 0, 7, 40, "X", "PA")
    rows[8] = ("00000009_000.png", "Pneumonitis", 0, 9, 40, "F", "PA")
    root = make_nih_root(tmp_path / "nih", rows)
    # 12 patients leave a split one: the split floor is not what this test is about
    project = make_project(tmp_path / "project", {**TINY, "ingest.source": "nih", "ingest.root": str(root),
                                                  "validate.min_split_patients": 1})
    result = run(["dvc", "repro"], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'preprocess'" not in output
    assert "validate: error: data/ingest/manifest.csv failed validation" in output
    assert "00000007_000.png" in output and "'X'" in output
    assert "00000009_000.png" in output and "Pneumonitis" in output
    assert "414" in output and "00000005_000.png" in output
    assert "Traceback" not in output
    assert not (project / "data" / "validated").exists() and not (project / "data" / "tfrecords").exists()
    summary = json.loads((project / "reports" / "validation" / "validate.json").read_text())
    assert json.loads((project / "metrics" / "validate.json").read_text()) == {
        "failed": 1, "warnings": len(summary["warnings"]), "ages_missing": 1, "rejected_rows": 1}
    failed = [c for c in summary["checks"] if not c["success"] and c["severity"] == "error"]
    assert [c["column"] for c in failed] == ["sex"] and failed[0]["examples"][0]["image_id"] == "00000007_000.png"


def targeted_nih_experiment(nih_subset: Path, *extra: str) -> list[str]:
    """The command of docs/stages.md's targeted experiment: real data, up to preprocess."""
    return ["dvc", "exp", "run", "-S", "ingest.source=nih", "-S", f"ingest.root={nih_subset}", *extra, "preprocess"]


def assert_nih_subset_preprocessed(project: Path, nih_subset: Path) -> None:
    report = json.loads((project / "reports" / "ingest.json").read_text())
    on_disk = len(list((nih_subset / "images_001" / "images").glob("*.png")))
    assert report["images_on_disk"] == report["manifest_rows"] == on_disk == 300
    assert report["rows_in_csv"] == 112_120 and report["rows_without_image"] == 112_120 - 300
    assert report["images_without_row"] == 0
    preprocess = json.loads((project / "reports" / "preprocess.json").read_text())
    assert sum(preprocess["records"].values()) == 300 and preprocess["quarantined"] == 0


def test_exp_run_on_a_real_partial_nih_download(tmp_path, nih_subset):
    """A targeted experiment on 300 real images listed among 112,120 CSV rows,
    in a project as a fresh clone holds it: the committed dvc.lock names the
    default run's cached outputs, which are in no cache here. Run, then queued."""
    project = make_project(tmp_path / "project", TINY)
    run(targeted_nih_experiment(nih_subset), project)
    assert_nih_subset_preprocessed(project, nih_subset)
    assert not (project / "models" / "model.keras").exists(), "exp run of preprocess must not train"

    env = queue_env()
    run(["git", "checkout", "--", "."], project)
    dvc(targeted_nih_experiment(nih_subset, "--queue", "-S", "preprocess.fit=pad")[1:], project, env)
    (name, state), = run_queue(project, env, 1).items()
    assert state == "Success", dvc(["queue", "logs", name], project, env)
    revisions = experiment_revisions(project, env)
    fits = {data["params"]["params.yaml"]["data"]["preprocess"]["fit"] for data in revisions.values()}
    assert "pad" in fits, revisions


def test_use_metadata_reruns_train_evaluate_and_explain_only(repro):
    """`dvc exp run -S train.use_metadata=true`: the data stages are kept; the
    model with patient metadata is trained, evaluated, explained and registered
    with its input encoding, and serves through the predict API."""
    project, _ = repro
    result = run(["dvc", "exp", "run", "-S", "train.use_metadata=true"], project)
    output = result.stdout + result.stderr
    ran = {stage for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "explain")
           if f"Running stage '{stage}'" in output}
    assert ran == {"train", "evaluate", "explain"}, output
    assert json.loads((project / "reports" / "train.json").read_text())["uses_metadata"] is True
    explain = json.loads((project / "reports" / "gradcam" / "explain.json").read_text())
    assert explain["localisation"]["overall"]["n"] > 0

    from pipeline.core.patient import PATIENT_ENCODING
    from pipeline.serve.predict import load_model

    store = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    served = load_model("models:/chestxray/2", tracking_uri=store)
    assert served.uses_patient_metadata
    image = served.preprocess(next((project / "data" / "ingest" / "phantom" / "images").glob("*.png")))
    probabilities = served.predict(image, {"age": 50, "sex": "F", "view": "PA"})
    assert probabilities.shape == (len(FINDINGS),) and np.all((probabilities >= 0) & (probabilities <= 1))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    location = client.get_model_version_download_uri("chestxray", "2")
    local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(project / "v2"), tracking_uri=store)
    # The MLmodel of version 2 says how its metadata input is encoded.
    card = mlflow.models.Model.load(str(Path(local) / "MLmodel")).metadata
    assert card["preprocessing"]["input"]["metadata"] == PATIENT_ENCODING
    assert "patient metadata" in (project / "reports" / "evaluate" / "model_card.html").read_text()


def test_params_seen_before_train_and_register_in_the_store_named_now(repro, tmp_path):
    """Back to params DVC has run before (its run cache holds that training)
    with MLFLOW_TRACKING_URI naming a new store: train and evaluate run again
    instead of being restored from the run cache, so the version is registered
    in the store the user named, not only in the one that first trained it."""
    project, _ = repro
    store = f"sqlite:///{tmp_path / 'new-store' / 'mlflow.db'}"
    result = subprocess.run(["dvc", "exp", "run", "-S", "train.use_metadata=false"], cwd=project,
                            env={**pipeline_env(), "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for stage in ("train", "evaluate", "explain"):
        assert f"Running stage '{stage}'" in output, output
    assert "is cached" not in output, output
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    assert str(client.get_model_version_by_alias("chestxray", "champion").version) == "1"
    run_id = json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"]
    assert client.get_model_version("chestxray", "1").run_id == run_id  # this run, in the new store


def test_more_data_rescores_the_champion_on_the_new_test_split(repro):
    """The retrain case: more phantom films and another backbone. The champion
    (whatever it was trained on) is loaded and scored on the new test split,
    and the decision comes from the paired comparison on those same images."""
    project, _ = repro
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    store = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    champion_before = int(client.get_model_version_by_alias("chestxray", "champion").version)
    result = run(["dvc", "exp", "run", "-S", "ingest.phantom.n_images=120", "-S", "train.epochs=1",
                  "-S", "train.backbone=small_cnn", "evaluate"], project)
    # the ingest stage said what the grown download added, against the manifest of the run before
    change = json.loads((project / "reports" / "ingest.json").read_text())["data_change"]
    assert change["totals"] == {"images_added": 30, "images_removed": 0, "patients_added": change["totals"][
        "patients_added"], "patients_removed": 0} and change["totals"]["patients_added"] > 0, change
    assert (change["before"]["images"], change["after"]["images"]) == (90, 120)
    assert json.loads((project / "metrics" / "ingest.json").read_text())["images_added"] == 30
    assert "ingest: since the last ingest: 30 images added, 0 removed" in result.stderr
    metrics = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    comparison = metrics["registry"]["comparison"]
    assert comparison is not None, result.stderr
    assert comparison["champion_version"] == champion_before
    assert comparison["test_images"] == metrics["test_images"] > 0
    low, high = comparison["mean_auc_diff_ci"]
    assert low <= comparison["mean_auc_diff"] <= high
    assert set(comparison["auc_diff"]) == set(FINDINGS)
    assert comparison["rule"] == metrics["registry"]["rule"]
    version = client.get_model_version("chestxray", str(metrics["registry"]["version"]))
    assert version.tags["compared_with_champion_version"] == str(champion_before)
    assert version.tags["champion_compared_on_images"] == str(comparison["test_images"])
    champion_after = int(client.get_model_version_by_alias("chestxray", "champion").version)
    expected = metrics["registry"]["version"] if metrics["registry"]["champion"] else champion_before
    assert champion_after == expected
    run_metrics = client.get_run(version.run_id).data.metrics
    assert run_metrics["champion_mean_auc_diff"] == round(comparison["mean_auc_diff"], 4)  # logged at 4 decimals
    card = (project / "reports" / "evaluate" / "model_card.html").read_text()
    assert f"champion v{champion_before} AUC" in card and "95% CI (paired, by patient)" in card


def test_a_new_split_seed_compares_without_the_champions_training_patients(repro, tmp_path):
    """Another split seed deals some of the champion's train and val patients
    into today's test split: the decision counts them, says so, and compares
    on the films of the patients neither model saw."""
    project, _ = repro
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    store = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    champion = client.get_model_version_by_alias("chestxray", "champion")
    trained_on = json.loads(Path(client.download_artifacts(champion.run_id, "training_patients.json",
                                                           str(tmp_path))).read_text())
    run(["dvc", "exp", "run", "-S", "seed=7", "-S", "train.epochs=1", "evaluate"], project)
    metrics = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    manifest = pd.read_csv(project / "data" / "validated" / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    seen = set(trained_on["train"]) | set(trained_on["val"])
    leaked = {p for p in test["patient_id"] if patient_hash(p) in seen}
    assert leaked, "seed 7 dealt none of the champion's patients into test: pick another seed"
    registry = metrics["registry"]
    reasons = " ".join(registry["reasons"])
    assert (f"trained or tuned on {len(leaked)} of the {test['patient_id'].nunique()} test patients "
            f"({int(test['patient_id'].isin(leaked).sum())} films)") in reasons, reasons
    comparison = registry["comparison"]
    if comparison is None:  # too few unseen patients: refused with the reason
        assert registry["rule"] == RULE_LEAKAGE and "too few test patients neither model saw" in reasons
    else:
        assert comparison["leakage"]["champion_seen_patients"] == len(leaked)
        assert comparison["test_patients"] == test["patient_id"].nunique() - len(leaked)
        assert comparison["test_images"] == int((~test["patient_id"].isin(leaked)).sum())


def test_a_checked_out_dvc_lock_after_a_run_still_runs_a_targeted_experiment(repro, nih_subset):
    """After a run (this one's outputs in the cache), `git checkout dvc.lock`
    brings back the committed lock, whose outputs are in no cache here: a
    targeted experiment on real data still runs. Last: it changes the project."""
    project, _ = repro
    run(["git", "checkout", "dvc.lock"], project)
    run(targeted_nih_experiment(nih_subset), project)
    assert_nih_subset_preprocessed(project, nih_subset)
