"""DVC stage train: fit the classifier on the train shards, tracked in MLflow."""
import sys

from pipeline.core.stage import run_stage


def main() -> None:
    import pandas as pd

    from pipeline.core.atomic import write_csv_atomic, write_json_atomic
    from pipeline.core.config import load_params, path_of, section
    from pipeline.core.figures import write_stage_figures
    from pipeline.model.train import train_and_track

    params = load_params()
    result = train_and_track(
        path_of(params, "tfrecords"), path_of(params, "model"), section(params, "train"),
        image_size=int(section(params, "preprocess")["image_size"]), seed=int(params["seed"]),
        experiment=section(params, "mlflow")["experiment"],
        logged_params={k: params[k] for k in ("seed", "ingest", "preprocess", "train")},
    )
    if not result["chief"]:
        # A worker of a multi-worker run: the chief writes every output.
        print(f"train: worker done after {result['summary']['epochs']} epoch(s); the chief writes the outputs",
              file=sys.stderr)
        return
    metrics = path_of(params, "metrics")
    write_stage_figures({"best_val_auc": result["summary"]["best_val_auc"]}, result["summary"],
                        metrics / "train.json", path_of(params, "train_report"))
    history = pd.DataFrame(result["history"]).rename_axis("epoch")
    history.index += 1
    write_csv_atomic(history.reset_index(), metrics / "train_history.csv", float_format="%.6f")
    write_json_atomic(path_of(params, "mlflow_run"), result["run"])
    print(f"train: best epoch {result['summary']['best_epoch']} of {result['summary']['epochs']}, "
          f"MLflow run {result['run']['run_id']}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("train", main)
