"""DVC stage evaluate: per-class AUC with bootstrap CIs, AUPRC and operating
points on test (thresholds from val), curves for `dvc plots`, a registry
version with the champion/challenger decision, and a model card."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402

# Figures logged to MLflow once per finding, as <prefix>_<finding>.
PER_FINDING_METRICS = {
    "auc": "test_auc", "auc_ci_low": "test_auc_ci_low", "auc_ci_high": "test_auc_ci_high", "auprc": "test_auprc",
    "thresholds": "threshold", "sensitivity": "test_sensitivity", "specificity": "test_specificity",
    "ppv": "test_ppv", "npv": "test_npv", "f1": "test_f1", "accuracy": "test_accuracy",
}


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    from pipeline.tracking import metric_name

    low, high = metrics["mean_auc_ci"]
    scalar = {"test_mean_auc": metrics["mean_auc"], "test_mean_auc_ci_low": low, "test_mean_auc_ci_high": high,
              "test_mean_auprc": metrics["mean_auprc"], "test_exact_match_accuracy": metrics["exact_match_accuracy"]}
    for key, prefix in PER_FINDING_METRICS.items():
        scalar.update({metric_name(f"{prefix}_{f}"): v for f, v in metrics[key].items()})
    return {k: float(v) for k, v in scalar.items() if v is not None}


def write_curves(curves: dict, folder: Path) -> list[Path]:
    """One CSV per curve type and finding (plots/roc/Mass.csv ...): what dvc.yaml's
    plots section draws, one plot per finding comparing revisions."""
    import pandas as pd

    from pipeline.atomic import write_csv_atomic

    written = []
    for kind, per_finding in curves.items():
        for finding, points in per_finding.items():
            path = folder / kind / f"{finding}.csv"
            write_csv_atomic(pd.DataFrame(points), path)
            written.append(path)
    return written


def split_sizes(tfrecords: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for shard in json.loads((tfrecords / "index.json").read_text())["shards"]:
        sizes[shard["split"]] = sizes.get(shard["split"], 0) + int(shard["records"])
    return sizes


def main() -> None:
    from pipeline.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
    from pipeline.config import load_params, path_of, section
    from pipeline.evaluate import curves, evaluation_metrics, manifest_hash, predict_split, predictions_table
    from pipeline.model_card import CARD_FILE, model_card_html
    from pipeline.metadata import METADATA_ENCODING
    from pipeline.models import load_model, uses_metadata
    from pipeline.registry import DEFAULT_MAX_CLASS_DROP, model_card_metadata, register_model
    from pipeline.tracking import configure_mlflow, data_hash, git_commit, resume_run

    params = load_params()
    settings = section(params, "evaluate")
    tfrecords, batch = path_of(params, "tfrecords"), int(settings["batch_size"])
    model = load_model(path_of(params, "model"))
    val_probs, val_labels, _ = predict_split(model, tfrecords, "val", batch)
    test_probs, test_labels, test_ids = predict_split(model, tfrecords, "test", batch)
    metrics = evaluation_metrics(
        (val_labels, val_probs), (test_labels, test_probs), settings["threshold_method"],
        target_sensitivity=float(settings["target_sensitivity"]),
        resamples=int(settings["bootstrap"]), seed=int(params["seed"]),
    )
    test_manifest = manifest_hash(test_ids, test_labels)
    metrics["test_manifest"] = test_manifest
    test_curves = curves(test_labels, test_probs)

    reports = path_of(params, "evaluate_reports")
    write_csv_atomic(predictions_table(test_ids, test_labels, test_probs), reports / "test_predictions.csv")
    write_json_atomic(reports / "thresholds.json", metrics["thresholds"])
    write_curves(test_curves, reports / "plots")

    mlflow_settings = section(params, "mlflow")
    name = mlflow_settings["registered_model"]
    summary = {"split_sizes": split_sizes(tfrecords), "data_hash": data_hash(tfrecords), "git_commit": git_commit(),
               "test_manifest": test_manifest, "backbone": params["train"]["backbone"],
               "image_size": params["preprocess"]["image_size"], "fit": params["preprocess"]["fit"],
               "inputs": "image and patient metadata (age, sex, view)" if uses_metadata(model) else "image only"}
    mlflow = configure_mlflow(mlflow_settings["experiment"])
    with resume_run(mlflow, path_of(params, "mlflow_run")):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.log_artifact(str(reports / "thresholds.json"))
        mlflow.log_artifacts(str(reports / "plots"), "plots")
        preprocessing = {k: params["preprocess"][k] for k in ("image_size", "fit")}
        preprocessing["input"] = "float32 grey values 0..255, shape (size, size, 1)"
        if uses_metadata(model):
            preprocessing["input"] = {"image": preprocessing["input"], "metadata": METADATA_ENCODING}
        registry = register_model(
            mlflow, model, name, model_card_metadata(metrics["thresholds"], preprocessing, metrics, test_manifest),
            {"data_hash": summary["data_hash"], "git_commit": summary["git_commit"],
             "backbone": params["train"]["backbone"], "params": json.dumps({k: params[k] for k in ("seed", "preprocess", "train", "evaluate")}, sort_keys=True)},
            max_class_drop=float(settings.get("max_class_drop", DEFAULT_MAX_CLASS_DROP)),
        )
        write_text_atomic(reports / CARD_FILE, model_card_html(name, summary, metrics, test_curves["roc"], registry))
        mlflow.log_artifact(str(reports / CARD_FILE))
    metrics["registered_model"] = {"name": name, "version": registry["version"]}
    metrics["registry"] = {k: registry[k] for k in ("version", "champion", "reasons")}
    write_json_atomic(path_of(params, "metrics") / "evaluate.json", metrics)
    verdict = "champion" if registry["champion"] else "challenger (champion unchanged)"
    print(f"evaluate: mean AUC {metrics['mean_auc']} on {metrics['test_images']} test images; registered {name} "
          f"version {registry['version']} as {verdict}: {'; '.join(registry['reasons'])}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("evaluate", main)
