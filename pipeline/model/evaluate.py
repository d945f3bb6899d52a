"""The evaluate stage: score the trained model on test (thresholds from val),
write the reports DVC plots and explain read, register the model in MLflow
with the champion/challenger decision, and write its model card."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline.core.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import load_keras_model, uses_patient_metadata
from pipeline.core.patient import PATIENT_ENCODING
from pipeline.core.tracking import configure_mlflow, data_hash, git_commit, metric_name, resume_run
from pipeline.model.metrics import curves, evaluation_metrics, manifest_hash, predictions_table
from pipeline.model.model_card import CARD_FILE, model_card_html
from pipeline.model.registry import DEFAULT_MAX_CLASS_DROP, register_model, registry_model_metadata
from pipeline.records.dataset import make_dataset, read_shard_index, shard_files

# Figures logged to MLflow once per finding, as <prefix>_<finding>.
PER_FINDING_METRICS = {
    "auc": "test_auc", "auc_ci_low": "test_auc_ci_low", "auc_ci_high": "test_auc_ci_high", "auprc": "test_auprc",
    "thresholds": "threshold", "sensitivity": "test_sensitivity", "specificity": "test_specificity",
    "ppv": "test_ppv", "npv": "test_npv", "f1": "test_f1", "accuracy": "test_accuracy",
}
IMAGE_INPUT_DESCRIPTION = "float32 grey values 0..255, shape (size, size, 1)"


def predict_split(model: keras.Model, tfrecord_dir: Path, split: str, batch_size: int = 16):
    """Stream a split through the model: (probabilities, labels, image ids)."""
    probs, labels, ids = [], [], []
    files = shard_files(tfrecord_dir, split)
    if not files:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    for inputs, y, image_ids in make_dataset(files, batch_size, with_ids=True, metadata=uses_patient_metadata(model)):
        probs.append(model.predict_on_batch(inputs))
        labels.append(y.numpy())
        ids.extend(i.decode() for i in image_ids.numpy())
    if not probs:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64), ids


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """The test figures as MLflow metrics: the summary, then one per finding."""
    low, high = metrics["mean_auc_ci"]
    scalar = {"test_mean_auc": metrics["mean_auc"], "test_mean_auc_ci_low": low, "test_mean_auc_ci_high": high,
              "test_mean_auprc": metrics["mean_auprc"], "test_exact_match_accuracy": metrics["exact_match_accuracy"]}
    for key, prefix in PER_FINDING_METRICS.items():
        scalar.update({metric_name(f"{prefix}_{f}"): v for f, v in metrics[key].items()})
    return {k: float(v) for k, v in scalar.items() if v is not None}


def write_curves(test_curves: dict, folder: Path) -> list[Path]:
    """One CSV per curve type and finding (plots/roc/Mass.csv ...): what dvc.yaml's
    plots section draws, one plot per finding comparing revisions."""
    written = []
    for kind, per_finding in test_curves.items():
        for finding, points in per_finding.items():
            path = folder / kind / f"{finding}.csv"
            write_csv_atomic(pd.DataFrame(points), path)
            written.append(path)
    return written


def split_sizes(tfrecord_dir: Path) -> dict[str, int]:
    return {split: int(entry["records"]) for split, entry in read_shard_index(tfrecord_dir)["splits"].items()}


def evaluate_model(
    model_file: Path, tfrecord_dir: Path, reports_dir: Path, run_file: Path, settings: dict, mlflow_settings: dict,
    training: dict, seed: int,
) -> dict:
    """The evaluate stage. `settings` is params.yaml's evaluate section,
    `mlflow_settings` its mlflow section, `training` the params the model
    was trained with ({"backbone", "image_size", "fit", "params": {...}}).
    Writes reports_dir (test_predictions.csv, thresholds.json, plots/,
    model card); returns the metrics, with the registry's decision."""
    batch = int(settings["batch_size"])
    model = load_keras_model(model_file)
    val_probs, val_labels, _ = predict_split(model, tfrecord_dir, "val", batch)
    test_probs, test_labels, test_ids = predict_split(model, tfrecord_dir, "test", batch)
    metrics = evaluation_metrics(
        (val_labels, val_probs), (test_labels, test_probs), settings["threshold_method"],
        target_sensitivity=float(settings["target_sensitivity"]), resamples=int(settings["bootstrap"]), seed=seed,
    )
    test_manifest = manifest_hash(test_ids, test_labels)
    metrics["test_manifest"] = test_manifest
    test_curves = curves(test_labels, test_probs)
    write_csv_atomic(predictions_table(test_ids, test_labels, test_probs), reports_dir / "test_predictions.csv")
    write_json_atomic(reports_dir / "thresholds.json", metrics["thresholds"])
    write_curves(test_curves, reports_dir / "plots")

    with_patient = uses_patient_metadata(model)
    summary = {"split_sizes": split_sizes(tfrecord_dir), "data_hash": data_hash(tfrecord_dir),
               "git_commit": git_commit(), "test_manifest": test_manifest, "backbone": training["backbone"],
               "image_size": training["image_size"], "fit": training["fit"],
               "inputs": "image and patient metadata (age, sex, view)" if with_patient else "image only"}
    preprocessing = {"image_size": training["image_size"], "fit": training["fit"], "input": IMAGE_INPUT_DESCRIPTION}
    if with_patient:
        preprocessing["input"] = {"image": IMAGE_INPUT_DESCRIPTION, "metadata": PATIENT_ENCODING}
    name = mlflow_settings["registered_model"]
    mlflow = configure_mlflow(mlflow_settings["experiment"])
    with resume_run(mlflow, run_file):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.log_artifact(str(reports_dir / "thresholds.json"))
        mlflow.log_artifacts(str(reports_dir / "plots"), "plots")
        registry = register_model(
            mlflow, model, name, registry_model_metadata(metrics["thresholds"], preprocessing, metrics, test_manifest),
            {"data_hash": summary["data_hash"], "git_commit": summary["git_commit"], "backbone": training["backbone"],
             "params": json.dumps(training["params"], sort_keys=True)},
            max_class_drop=float(settings.get("max_class_drop", DEFAULT_MAX_CLASS_DROP)),
        )
        write_text_atomic(reports_dir / CARD_FILE,
                          model_card_html(name, summary, metrics, test_curves["roc"], registry))
        mlflow.log_artifact(str(reports_dir / CARD_FILE))
    metrics["registered_model"] = {"name": name, "version": registry["version"]}
    metrics["registry"] = {k: registry[k] for k in ("version", "champion", "reasons")}
    return metrics
