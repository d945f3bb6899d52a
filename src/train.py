"""DVC stage train: fit the classifier on the train shards, tracked in MLflow."""
import sys

from pipeline.core.settings import Settings
from pipeline.core.stage import run_stage


def main(settings: Settings) -> None:
    from pipeline.model.backbones import check_backbone_settings

    check_backbone_settings(settings.train.backbone, settings.preprocess.image_size, settings.train.weights)
    import pandas as pd

    from pipeline.core.atomic import write_csv_atomic, write_json_atomic
    from pipeline.core.figures import write_stage_figures
    from pipeline.model.train import train_and_track

    result = train_and_track(
        settings.path("tfrecords"), settings.path("model"), settings.train,
        image_size=settings.preprocess.image_size, seed=settings.seed, experiment=settings.mlflow.experiment,
        logged_params=settings.logged("seed", "ingest", "preprocess", "train"),
        mlflow_timeout_s=settings.mlflow.timeout_s,
    )
    if not result["chief"]:
        # A worker of a multi-worker run: the chief writes every output.
        print(f"train: worker done after {result['summary']['epochs']} epoch(s); the chief writes the outputs",
              file=sys.stderr)
        return
    metrics = settings.path("metrics")
    write_stage_figures({"best_val_auc": result["summary"]["best_val_auc"]}, result["summary"],
                        metrics / "train.json", settings.path("train_report"))
    history = pd.DataFrame(result["history"]).rename_axis("epoch")
    history.index += 1
    write_csv_atomic(history.reset_index(), metrics / "train_history.csv", float_format="%.6f")
    write_json_atomic(settings.path("mlflow_run"), result["run"])
    print(f"train: best epoch {result['summary']['best_epoch']} of {result['summary']['epochs']}, "
          f"MLflow run {result['run']['run_id']}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("train", main)
