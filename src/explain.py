"""DVC stage explain: a heatmap gallery of true and false positives and missed films, and
localisation scores against the ground-truth boxes of the test split."""
import sys

from pipeline.core.settings import Settings
from pipeline.core.stage import run_stage


def main(settings: Settings) -> None:
    from pipeline.core.figures import write_stage_figures
    from pipeline.explain.explanations import REPORT_FILE, explain_model, explain_summary, summary_line

    out_dir = settings.path("gradcam")
    metrics = explain_model(
        settings.path("model"), settings.path("tfrecords"), settings.path("evaluate_reports"), settings.path("boxes"),
        out_dir, settings.path("mlflow_run"), settings.explain, experiment=settings.mlflow.experiment,
        image_size=settings.preprocess.image_size, fit=settings.preprocess.fit, seed=settings.seed,
        mlflow_timeout_s=settings.mlflow.timeout_s, data_source=settings.ingest.source,
    )
    write_stage_figures(explain_summary(metrics), metrics, settings.path("metrics") / "explain.json",
                        out_dir / REPORT_FILE)
    print(f"explain: {sum(metrics['gallery'].values())} overlays "
          f"in {out_dir}; {summary_line(metrics)}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("explain", main)
