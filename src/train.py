"""DVC stage train: fit the classifier on the train shards, tracked in MLflow."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    import csv

    from pipeline.atomic import atomic_path, write_json_atomic
    from pipeline.config import load_params, path_of, section
    from pipeline.models import build_model
    from pipeline.tracking import configure_mlflow, data_hash, flatten_params, git_commit
    from pipeline.train import configure_mixed_precision, distribution_strategy, seed_everything, train_model

    params = load_params()
    settings = section(params, "train")
    tfrecords = path_of(params, "tfrecords")
    seed = int(params["seed"])
    # The strategy first: MultiWorkerMirroredStrategy must exist before other TF ops.
    strategy = distribution_strategy()
    deterministic = seed_everything(seed, settings.get("deterministic", "auto"))
    mixed = configure_mixed_precision(settings.get("mixed_precision", "auto"))
    print(f"train: {type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s), "
          f"mixed precision {'on' if mixed else 'off'}, op determinism {'on' if deterministic else 'off'}",
          file=sys.stderr)
    with strategy.scope():
        model = build_model(
            settings["backbone"], int(params["preprocess"]["image_size"]), str(settings["weights"]),
            dropout=float(settings.get("dropout", 0.0)), batchnorm_momentum=settings.get("batchnorm_momentum"),
            use_metadata=bool(settings.get("use_metadata", False)),
        )
    mlflow = configure_mlflow(section(params, "mlflow")["experiment"])
    tags = {"git_commit": git_commit(), "data_hash": data_hash(tfrecords), "backbone": settings["backbone"]}
    with mlflow.start_run(run_name=f"{settings['backbone']}-{tags['data_hash'][:8]}", tags=tags) as run:
        mlflow.log_params(flatten_params({k: params[k] for k in ("seed", "ingest", "preprocess", "train")}))
        with atomic_path(path_of(params, "model")) as checkpoint:
            result = train_model(model, tfrecords, checkpoint, settings, seed, mlflow, strategy)
        mlflow.log_metrics({f"train_{k}": float(v) for k, v in result["summary"].items()})
    write_json_atomic(path_of(params, "metrics") / "train.json", result["summary"])
    history = result["history"]
    with atomic_path(path_of(params, "metrics") / "train_history.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *history])
        for epoch, values in enumerate(zip(*history.values()), start=1):
            writer.writerow([epoch, *(f"{v:.6f}" for v in values)])
    write_json_atomic(
        path_of(params, "mlflow_run"),
        {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": mlflow.get_tracking_uri()},
    )
    print(f"train: best epoch {result['summary']['best_epoch']} of {result['summary']['epochs']}, "
          f"MLflow run {run.info.run_id}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("train", main)
