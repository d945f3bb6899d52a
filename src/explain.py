"""DVC stage explain: a heatmap gallery of true and false positives, and
localisation scores against the ground-truth boxes of the test split."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    import json

    import pandas as pd

    from pipeline.atomic import atomic_dir, write_json_atomic
    from pipeline.config import load_params, path_of, section
    from pipeline.explain import (
        check_settings, examples_table, explain_examples, explain_metrics, load_test_images,
        localisation_targets, localise, mlflow_metrics, select_examples, summary_line, truth_boxes,
    )
    from pipeline.gallery import PAGE_FILE, render_gallery_html
    from pipeline.gradcam import resolve_layer
    from pipeline.localisation import summarise
    from pipeline.models import load_model
    from pipeline.tracking import configure_mlflow, resume_run

    params = load_params()
    settings = check_settings(section(params, "explain"))
    image_size, fit = int(params["preprocess"]["image_size"]), params["preprocess"]["fit"]
    reports = path_of(params, "evaluate_reports")
    predictions = pd.read_csv(reports / "test_predictions.csv")
    thresholds = json.loads((reports / "thresholds.json").read_text())
    examples = select_examples(predictions, thresholds, settings["top_k"], settings["false_positives"])
    boxes = pd.read_csv(path_of(params, "boxes"))
    targets = localisation_targets(boxes, set(predictions["image_id"]), settings["max_localisation_images"],
                                   int(params["seed"]))
    wanted = set(examples["image_id"]) | set(targets["image_id"])
    images = load_test_images(path_of(params, "tfrecords"), wanted)
    model = load_model(path_of(params, "model"))
    layer = resolve_layer(model, settings["layer"])

    scores = localise(model, truth_boxes(targets, images, image_size, fit), images, settings, layer,
                      int(params["seed"]))
    # A gallery image shows its box whether or not it is in the localisation sample.
    entries = explain_examples(model, examples, images, truth_boxes(boxes, images, image_size, fit), settings,
                               layer)
    metrics = explain_metrics(settings, layer, entries, summarise(scores, settings["iobb_thresholds"]))
    out_dir = path_of(params, "gradcam")
    with atomic_dir(out_dir) as staging:
        for entry in entries:
            (staging / entry["overlay"]).write_bytes(entry["png"])
        (staging / PAGE_FILE).write_text(render_gallery_html(entries, metrics), encoding="utf-8")
        examples_table(entries).to_csv(staging / "examples.csv", index=False, lineterminator="\n")
        scores.to_csv(staging / "localisation.csv", index=False, lineterminator="\n")
    write_json_atomic(path_of(params, "metrics") / "explain.json", metrics)

    mlflow = configure_mlflow(section(params, "mlflow")["experiment"])
    with resume_run(mlflow, path_of(params, "mlflow_run")):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tags({"explain_method": settings["method"], "explain_layer": layer})
        mlflow.log_artifacts(str(out_dir), artifact_path="gradcam")
    print(f"explain: {len(entries)} overlays and {PAGE_FILE} in {out_dir}; {summary_line(metrics)}",
          file=sys.stderr)


if __name__ == "__main__":
    run_stage("explain", main)
