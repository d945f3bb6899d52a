"""DVC stage evaluate: per-class AUC with bootstrap CIs, AUPRC and operating
points on test (thresholds from val), curves for `dvc plots`, a registry
version with the champion/challenger decision, and a model card."""
import sys

from pipeline.core.settings import Settings
from pipeline.core.stage import run_stage


def main(settings: Settings) -> None:
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.strata import read_strata
    from pipeline.model.evaluate import REPORT_FILE, evaluate_model, evaluation_summary
    from pipeline.model.strata import flag_sentence

    preprocess = settings.preprocess
    training = {"backbone": settings.train.backbone, "image_size": preprocess.image_size, "fit": preprocess.fit,
                "data_source": settings.ingest.source,
                "params": settings.logged("seed", "ingest", "preprocess", "train", "evaluate")}
    ingest = settings.ingest
    # read first: a column the metadata table lacks stops the stage before any scoring
    strata_table = read_strata(ingest.source, ingest.root, ingest.labels, settings.evaluate.strata)
    metrics = evaluate_model(
        settings.path("model"), settings.path("tfrecords"), settings.path("evaluate_reports"),
        settings.path("evaluate_plots"), settings.path("mlflow_run"), settings.evaluate, settings.mlflow, training,
        seed=settings.seed, manifest_file=settings.path("validated_manifest"), strata_table=strata_table,
    )
    write_stage_figures(evaluation_summary(metrics), metrics, settings.path("metrics") / "evaluate.json",
                        settings.path("evaluate_reports") / REPORT_FILE)
    registry = metrics["registry"]
    verdict = "champion" if registry["champion"] else "challenger (champion unchanged)"
    count = metrics["mean_auc_findings"]
    mean = (f"mean AUC {metrics['mean_auc']:.3f} over {count} finding{'' if count == 1 else 's'}"
            if metrics["mean_auc"] is not None else
            f"no AUC (no finding has {metrics['min_positives']} positive and negative test films)")
    print(f"evaluate: {mean} on {metrics['test_images']} test images of {metrics['test_patients']} patients; "
          f"registered {metrics['registered_model']['name']} version {registry['version']} as {verdict}: "
          f"{'; '.join(registry['reasons'])}", file=sys.stderr)
    for gap in (metrics.get("strata") or {}).get("flagged", []):
        print(f"evaluate: stratum flagged: {flag_sentence(gap)}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("evaluate", main)
