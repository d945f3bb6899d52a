"""DVC stage explain: Grad-CAM overlays for the best-scored positive test images."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    import pandas as pd

    from pipeline.atomic import atomic_dir, write_json_atomic
    from pipeline.config import load_params, path_of, section
    from pipeline.explain import explain_examples, load_test_images, pointing_summary, select_examples
    from pipeline.models import load_model
    from pipeline.tracking import configure_mlflow, resume_run

    params = load_params()
    settings = section(params, "explain")
    predictions = pd.read_csv(path_of(params, "evaluate_reports") / "test_predictions.csv")
    examples = select_examples(predictions, int(settings["per_finding"]))
    images = load_test_images(path_of(params, "tfrecords"), set(examples["image_id"]))
    boxes = pd.read_csv(path_of(params, "boxes"))
    model = load_model(path_of(params, "model"))
    out_dir = path_of(params, "gradcam")
    with atomic_dir(out_dir) as staging:
        results = explain_examples(
            model, examples, images, boxes, int(params["preprocess"]["image_size"]),
            params["preprocess"]["fit"], staging, int(settings["batch_size"]),
        )
        results.to_csv(staging / "examples.csv", index=False, lineterminator="\n")
    summary = pointing_summary(results)
    write_json_atomic(path_of(params, "metrics") / "explain.json", summary)
    mlflow = configure_mlflow(section(params, "mlflow")["experiment"])
    with resume_run(mlflow, path_of(params, "mlflow_run")):
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="gradcam")
    print(f"explain: {len(results)} Grad-CAM overlays in {out_dir}; {summary}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("explain", main)
