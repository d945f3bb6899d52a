"""DVC stage evaluate: per-class AUC on test, thresholds from val, a registry version."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    from pipeline.atomic import write_csv_atomic, write_json_atomic
    from pipeline.config import load_params, path_of, section
    from pipeline.evaluate import evaluation_metrics, predict_split, predictions_table
    from pipeline.models import load_model
    from pipeline.registry import model_card_metadata, register_model
    from pipeline.tracking import configure_mlflow, data_hash, git_commit, metric_name, resume_run

    params = load_params()
    settings = section(params, "evaluate")
    tfrecords, batch = path_of(params, "tfrecords"), int(settings["batch_size"])
    model = load_model(path_of(params, "model"))
    val_probs, val_labels, _ = predict_split(model, tfrecords, "val", batch)
    test_probs, test_labels, test_ids = predict_split(model, tfrecords, "test", batch)
    metrics = evaluation_metrics((val_labels, val_probs), (test_labels, test_probs), settings["threshold_method"])

    reports = path_of(params, "evaluate_reports")
    write_csv_atomic(predictions_table(test_ids, test_labels, test_probs), reports / "test_predictions.csv")
    write_json_atomic(reports / "thresholds.json", metrics["thresholds"])

    mlflow_settings = section(params, "mlflow")
    mlflow = configure_mlflow(mlflow_settings["experiment"])
    with resume_run(mlflow, path_of(params, "mlflow_run")):
        scalar = {"test_mean_auc": metrics["mean_auc"]}
        scalar.update({metric_name(f"test_auc_{f}"): v for f, v in metrics["auc"].items()})
        scalar.update({metric_name(f"threshold_{f}"): v for f, v in metrics["thresholds"].items()})
        mlflow.log_metrics({k: float(v) for k, v in scalar.items() if v is not None})
        mlflow.log_artifact(str(reports / "thresholds.json"))
        preprocessing = {k: params["preprocess"][k] for k in ("image_size", "fit")}
        preprocessing["input"] = "float32 grey values 0..255, shape (size, size, 1)"
        version = register_model(
            mlflow, model, mlflow_settings["registered_model"],
            model_card_metadata(metrics["thresholds"], preprocessing, metrics),
            {"mean_auc": f"{metrics['mean_auc']}", "data_hash": data_hash(tfrecords), "git_commit": git_commit(),
             "backbone": params["train"]["backbone"]},
        )
    metrics["registered_model"] = {"name": mlflow_settings["registered_model"], "version": version}
    write_json_atomic(path_of(params, "metrics") / "evaluate.json", metrics)
    print(f"evaluate: mean AUC {metrics['mean_auc']} on {metrics['test_images']} test images; "
          f"registered {mlflow_settings['registered_model']} version {version}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("evaluate", main)
