"""DVC stage explain: a heatmap gallery of true and false positives, and
localisation scores against the ground-truth boxes of the test split."""
import sys

from pipeline.core.stage import run_stage


def main() -> None:
    from pipeline.core.config import load_params, path_of, section
    from pipeline.core.figures import write_stage_figures
    from pipeline.explain.explanations import REPORT_FILE, explain_model, explain_summary, summary_line

    params = load_params()
    preprocess = section(params, "preprocess")
    out_dir = path_of(params, "gradcam")
    metrics = explain_model(
        path_of(params, "model"), path_of(params, "tfrecords"), path_of(params, "evaluate_reports"),
        path_of(params, "boxes"), out_dir, path_of(params, "mlflow_run"), section(params, "explain"),
        experiment=section(params, "mlflow")["experiment"], image_size=int(preprocess["image_size"]),
        fit=preprocess["fit"], seed=int(params["seed"]),
    )
    write_stage_figures(explain_summary(metrics), metrics, path_of(params, "metrics") / "explain.json",
                        out_dir / REPORT_FILE)
    print(f"explain: {metrics['gallery']['true_positives'] + metrics['gallery']['false_positives']} overlays "
          f"in {out_dir}; {summary_line(metrics)}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("explain", main)
