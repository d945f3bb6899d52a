"""The evaluate stage: score the trained model on test (thresholds from val),
write the reports DVC plots and explain read, re-score the registry's champion
on the same test images and compare the two (pipeline.model.champion),
register the model in MLflow with that decision, and write its model card."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline.core.atomic import atomic_dir, write_csv_atomic, write_json_atomic, write_text_atomic
from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import (
    curves,
    evaluation_metrics,
    manifest_hash,
    predictions_table,
)
from pipeline.core.model_io import REFERENCE_ARTIFACT, load_keras_model, uses_patient_metadata
from pipeline.core.patient import PATIENT_ENCODING
from pipeline.core.settings import EvaluateSettings, MlflowSettings
from pipeline.core.tracking import configure_mlflow, data_hash, git_commit, log_table, metric_name, resume_run
from pipeline.data.sources import synthetic_warning
from pipeline.data.strata import strata_of_films
from pipeline.model.audit import (
    calibration_mlflow_metrics,
    calibration_section,
    recalibrate,
    reliability_tables,
    split_demographics,
    split_patient_ids,
)
from pipeline.model.champion import SplitScores, champion_decision
from pipeline.model.leakage import FINGERPRINT_FILE, fingerprint
from pipeline.model.model_card import CARD_FILE, model_card_html
from pipeline.model.registry import register_decided, registry_model_metadata
from pipeline.model.scoring import predict_split
from pipeline.model.strata import MISSED_FILE, missed_in_flagged, strata_mlflow_metrics, strata_report, strata_table
from pipeline.model.subgroups import STRATUM_PREFIX, subgroup_mlflow_metrics, subgroup_report, subgroup_table
from pipeline.monitor.reference import REFERENCE_FILE, write_reference
from pipeline.records.dataset import read_shard_index
from pipeline.serve.api import XrayModel

# Figures logged to MLflow once per finding, as <prefix>_<finding>: the AUC
# and the threshold, which runs are sorted and compared on. The rest of each
# finding's figures is one row of the logged table FINDING_TABLE.
PER_FINDING_METRICS = {
    "auc": "test_auc", "auc_ci_low": "test_auc_ci_low", "auc_ci_high": "test_auc_ci_high", "thresholds": "threshold",
}
FINDING_TABLE = "tables/test_by_finding.json"  # MLflow artifacts: the UI shows them as tables
SLICE_TABLE = "tables/test_by_slice.json"
STRATA_TABLE = "tables/test_by_stratum.json"
FINDING_COLUMNS = ("auc", "auc_ci_low", "auc_ci_high", "auprc", "thresholds", "sensitivity", "specificity", "ppv",
                   "npv", "f1", "accuracy")
AUC_PLOT_FILE = "auc_by_finding.csv"  # in paths.evaluate_plots (reports/plots/)
RELIABILITY_PLOT_FILE = "reliability.csv"  # in paths.evaluate_plots: the pooled curve
RELIABILITY_FILE = "reliability.csv"  # in reports/evaluate/: every finding's curve
REPORT_FILE = "evaluate.json"  # in reports/evaluate/: the whole record, metrics/evaluate.json its summary
IMAGE_INPUT_DESCRIPTION = "float32 grey values 0..255, shape (size, size, 1)"


def evaluation_summary(metrics: dict) -> dict:
    """metrics/evaluate.json: the few scalars DVC shows and diffs; the rest of
    `metrics` goes to reports/evaluate/evaluate.json under the same keys."""
    low, high = metrics["mean_auc_ci"]
    return {"mean_auc": metrics["mean_auc"], "auc_ci_low": low, "auc_ci_high": high,
            "mean_ece": metrics["calibration"]["mean_ece"]}


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """The test figures as MLflow metrics: the summary, then one per finding."""
    low, high = metrics["mean_auc_ci"]
    scalar = {"test_mean_auc": metrics["mean_auc"], "test_mean_auc_ci_low": low, "test_mean_auc_ci_high": high,
              "test_mean_auprc": metrics["mean_auprc"], "test_exact_match_accuracy": metrics["exact_match_accuracy"],
              "test_mean_auc_findings": metrics["mean_auc_findings"], "test_images": metrics["test_images"],
              "test_patients": metrics["test_patients"]}
    for key, prefix in PER_FINDING_METRICS.items():
        scalar.update({metric_name(f"{prefix}_{f}"): v for f, v in metrics[key].items()})
    return {k: float(v) for k, v in scalar.items() if v is not None}


# Digits of the figures logged to MLflow: a test AUC on thousands of films is
# not known better than this, and 16 digits in the runs table read as precision.
LOGGED_DIGITS = 4


def rounded(figures: dict[str, float]) -> dict[str, float]:
    return {key: round(value, LOGGED_DIGITS) for key, value in figures.items()}


def log_evaluate_params(mlflow, settings: dict) -> None:
    """params.yaml's evaluate section as the run's `evaluate.*` params (the
    threshold and calibration method among them), so the runs table can show
    them. A run evaluated again with other values keeps its first ones (MLflow
    params cannot change) and gets the new ones as `evaluate.*` tags, which
    the runs table shows too."""
    from pipeline.core.tracking import flatten_params

    flat = flatten_params({"evaluate": settings})
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in flat.items() if k not in logged})
    changed = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
    if changed:
        mlflow.set_tags(changed)


def finding_table(metrics: dict) -> pd.DataFrame:
    """One row per finding: test positives, every figure of FINDING_COLUMNS and
    the ECE (at LOGGED_DIGITS), and why the AUC is missing where it is."""
    ece = (metrics.get("calibration") or {}).get("ece") or {}
    rows = []
    for f in FINDINGS:
        row = {"finding": f, "test_positives": metrics["test_positives"][f]}
        row.update({("threshold" if key == "thresholds" else key): _rounded(metrics[key][f])
                    for key in FINDING_COLUMNS})
        row["ece"] = _rounded(ece.get(f))
        row["auc_missing_reason"] = (metrics.get("auc_missing_reason") or {}).get(f)
        rows.append(row)
    return pd.DataFrame(rows)


def log_tables(mlflow, metrics: dict) -> None:
    """Per-finding and per-slice detail as MLflow tables (artifacts under tables/)."""
    log_table(mlflow, finding_table(metrics), FINDING_TABLE)
    log_table(mlflow, pd.DataFrame(subgroup_table(metrics["subgroups"])).round(LOGGED_DIGITS), SLICE_TABLE)
    if metrics.get("strata"):
        log_table(mlflow, pd.DataFrame(strata_table(metrics["strata"])).round(LOGGED_DIGITS), STRATA_TABLE)


def comparison_metrics(comparison: dict | None) -> dict[str, float]:
    """The paired comparison with the champion as MLflow metrics (none without one)."""
    if not comparison:
        return {}
    low, high = comparison["mean_auc_diff_ci"]
    scalar = {"champion_mean_auc_diff": comparison["mean_auc_diff"], "champion_mean_auc_diff_ci_low": low,
              "champion_mean_auc_diff_ci_high": high, "champion_test_mean_auc": comparison["champion_mean_auc"],
              "champion_seen_test_patients": comparison["leakage"]["champion_seen_patients"],
              "champion_compared_test_patients": comparison["leakage"]["compared_patients"]}
    scalar.update({metric_name(f"champion_auc_diff_{f}"): v for f, v in comparison["auc_diff"].items()})
    return {k: float(v) for k, v in scalar.items() if v is not None}


def write_curves(test_curves: dict, folder: Path) -> list[Path]:
    """One CSV per curve type and finding (plots/roc/Mass.csv ...): what dvc.yaml's
    plots section draws, one plot per finding comparing revisions."""
    written = []
    for kind, per_finding in test_curves.items():
        for finding, points in per_finding.items():
            path = folder / kind / f"{finding}.csv"
            write_csv_atomic(pd.DataFrame(points), path)
            written.append(path)
    return written


def auc_table(metrics: dict, data_source: str | None) -> pd.DataFrame:
    """Test AUC and its 95% CI per finding (those defined on test): a bar chart
    in `dvc plots`, so that `dvc plots diff` compares experiments finding by finding.
    data_warning: for a synthetic source, the warning the chart draws above its
    bars (.dvc/plots/auc_ci.json), the first plot of the `dvc plots show` page."""
    warning = synthetic_warning(data_source)
    rows = [{"finding": f, "auc": round(auc, 4), "ci_low": _rounded(metrics["auc_ci_low"][f]),
             "ci_high": _rounded(metrics["auc_ci_high"][f]), "data_warning": warning}
            for f, auc in metrics["auc"].items() if auc is not None]
    return pd.DataFrame(rows, columns=["finding", "auc", "ci_low", "ci_high", "data_warning"])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, LOGGED_DIGITS)


def split_sizes(tfrecord_dir: Path) -> dict[str, int]:
    return {split: int(entry["records"]) for split, entry in read_shard_index(tfrecord_dir)["splits"].items()}


@dataclass
class Evaluation:
    """The model's figures on the test split (thresholds from val) and what the reports draw."""

    metrics: dict
    scores: SplitScores  # test labels, (recalibrated) probabilities, ids, thresholds, patients
    curves: dict
    reliability: dict
    recalibration: dict | None


def measure_test_split(model: keras.Model, tfrecord_dir: Path, settings: EvaluateSettings,
                       seed: int, strata_table: pd.DataFrame | None = None) -> Evaluation:
    """Score val and test, recalibrate (evaluate.calibration, fitted on val),
    and measure test: per-finding figures with intervals, subgroups, calibration,
    and with `strata_table` ({image id: evaluate.strata columns}) the strata."""
    val_probs, val_labels, _ = predict_split(model, tfrecord_dir, "val", settings.batch_size)
    raw_test_probs, test_labels, test_ids = predict_split(model, tfrecord_dir, "test", settings.batch_size)
    recalibration, val_probs, test_probs = recalibrate(settings.calibration, (val_labels, val_probs), raw_test_probs)
    people = split_demographics(tfrecord_dir, "test", test_ids)
    strata = strata_of_films(strata_table, test_ids) if strata_table is not None and len(strata_table.columns) else {}
    # carried with the films' patients, so that the champion comparison's subset and check see them
    people.update({STRATUM_PREFIX + column: np.array(values, dtype=object) for column, values in strata.items()})
    floors = {"min_positives": settings.min_slice_positives, "min_patients": settings.min_slice_patients}
    metrics = evaluation_metrics(
        (val_labels, val_probs), (test_labels, test_probs), settings.threshold_method,
        target_sensitivity=float(settings.target_sensitivity), resamples=settings.bootstrap, seed=seed,
        test_patients=people["patient_id"], **floors,
    )
    metrics["test_manifest"] = manifest_hash(test_ids, test_labels)
    metrics["subgroups"] = subgroup_report(
        test_labels, test_probs, metrics["thresholds"], people,
        min_slice_positives=settings.min_slice_positives, resamples=settings.bootstrap, seed=seed,
        min_slice_patients=settings.min_slice_patients)
    if strata:
        metrics["strata"] = strata_report(
            test_labels, test_probs, metrics["thresholds"], people["patient_id"], strata,
            min_slice_positives=settings.min_slice_positives, min_slice_patients=settings.min_slice_patients,
            resamples=settings.bootstrap, seed=seed)
    metrics["calibration"], reliability = calibration_section(
        test_labels, raw_test_probs, test_probs, settings.calibration, settings.calibration_bins)
    if recalibration:
        metrics["calibration"]["fitted"] = recalibration
    scores = SplitScores(test_labels, test_probs, test_ids, metrics["thresholds"], people)
    return Evaluation(metrics, scores, curves(test_labels, test_probs), reliability, recalibration)


def write_evaluation_files(evaluation: Evaluation, reports_dir: Path, plots_dir: Path,
                           data_source: str | None) -> None:
    """reports_dir's predictions, thresholds and reliability curves (and with
    strata, the missed films of each flagged one); plots_dir whole."""
    metrics, scores = evaluation.metrics, evaluation.scores
    write_csv_atomic(predictions_table(scores.ids, scores.labels, scores.probs), reports_dir / "test_predictions.csv")
    write_json_atomic(reports_dir / "thresholds.json", metrics["thresholds"])
    missed_file = reports_dir / MISSED_FILE
    if metrics.get("strata"):
        strata = {key.removeprefix(STRATUM_PREFIX): values for key, values in scores.people.items()
                  if key.startswith(STRATUM_PREFIX)}
        write_json_atomic(missed_file, missed_in_flagged(metrics["strata"], scores.labels, scores.probs,
                                                         metrics["thresholds"], scores.ids, strata))
    elif missed_file.exists():  # from a run with strata: not this run's
        missed_file.unlink()
    every_finding, pooled = reliability_tables(metrics["calibration"], evaluation.reliability)
    write_csv_atomic(pd.DataFrame(every_finding), reports_dir / RELIABILITY_FILE)
    # whole, so that no curve of a finding this run could not draw is left from an earlier one
    with atomic_dir(plots_dir) as folder:
        write_curves(evaluation.curves, folder)
        write_csv_atomic(auc_table(metrics, data_source), folder / AUC_PLOT_FILE)
        write_csv_atomic(pd.DataFrame(pooled).drop(columns="finding"), folder / RELIABILITY_PLOT_FILE)


def model_description(model: keras.Model, tfrecord_dir: Path, training: dict, test_manifest: str) -> tuple[dict, dict]:
    """(the model card's summary, the registered model's preprocessing contract)."""
    with_patient = uses_patient_metadata(model)
    summary = {"split_sizes": split_sizes(tfrecord_dir), "data_hash": data_hash(tfrecord_dir),
               "git_commit": git_commit(), "test_manifest": test_manifest, "backbone": training["backbone"],
               "image_size": training["image_size"], "fit": training["fit"], "data_source": training.get("data_source"),
               "inputs": "image and patient metadata (age, sex, view)" if with_patient else "image only"}
    preprocessing = {"image_size": training["image_size"], "fit": training["fit"], "input": IMAGE_INPUT_DESCRIPTION}
    if with_patient:
        preprocessing["input"] = {"image": IMAGE_INPUT_DESCRIPTION, "metadata": PATIENT_ENCODING}
    return summary, preprocessing


def evaluate_model(
    model_file: Path, tfrecord_dir: Path, reports_dir: Path, plots_dir: Path, run_file: Path,
    settings: EvaluateSettings, mlflow_settings: MlflowSettings, training: dict, seed: int,
    manifest_file: Path | None = None, strata_table: pd.DataFrame | None = None,
) -> dict:
    """The evaluate stage. `settings` is params.yaml's evaluate section,
    `mlflow_settings` its mlflow section, `training` the params the model
    was trained with ({"backbone", "image_size", "fit", "params": {...}}).
    With `manifest_file` (the validated manifest: where the test films are),
    the test films' reference profile is registered with the version; with
    `strata_table` (pipeline.data.strata.read_strata) the test figures are
    split by its columns too (metrics["strata"]).
    Writes reports_dir (test_predictions.csv, thresholds.json, model card)
    and replaces plots_dir whole (the curves `dvc plots` draws); returns the
    metrics, with the registry's decision."""
    model = load_keras_model(model_file)
    evaluation = measure_test_split(model, tfrecord_dir, settings, seed, strata_table)
    write_evaluation_files(evaluation, reports_dir, plots_dir, training.get("data_source"))
    metrics = evaluation.metrics
    summary, preprocessing = model_description(model, tfrecord_dir, training, metrics["test_manifest"])
    artifacts = {}
    if manifest_file is not None and settings.reference_films > 0:
        reference = test_reference_profile(model, evaluation, preprocessing, manifest_file, settings, seed,
                                           training.get("data_source"))
        artifacts[REFERENCE_ARTIFACT] = reports_dir / REFERENCE_FILE
        write_reference(reference, artifacts[REFERENCE_ARTIFACT])
        metrics["reference_profile"] = {"films": reference["films"], "split": reference["split"],
                                        "not_profiled": len(reference["not_profiled"])}
    name = mlflow_settings.registered_model
    mlflow = configure_mlflow(mlflow_settings.experiment, mlflow_settings.timeout_s)

    def decide() -> dict:
        return champion_decision(name, mlflow.get_tracking_uri(), tfrecord_dir, evaluation.scores, settings, seed)

    with resume_run(mlflow, run_file):
        log_evaluation(mlflow, metrics, settings, tfrecord_dir, reports_dir, plots_dir)
        # Decided and registered in one step (pipeline.model.registry.register_decided),
        # so that two evaluations at once cannot both take the champion alias.
        registry = register_decided(
            mlflow, model, name,
            registry_model_metadata(metrics["thresholds"], preprocessing, metrics, metrics["test_manifest"],
                                    evaluation.recalibration, data_source=training.get("data_source"),
                                    serving=dataclasses.asdict(settings.serving)),
            {"data_hash": summary["data_hash"], "git_commit": summary["git_commit"], "backbone": training["backbone"]},
            decide, params=training["params"], card_artifact=CARD_FILE, artifacts=artifacts,
        )
        decision = registry["decision"]
        if decision["comparison"]:
            mlflow.log_metrics(rounded(comparison_metrics(decision["comparison"])))
        registry["comparison"] = decision["comparison"]
        write_text_atomic(reports_dir / CARD_FILE,
                          model_card_html(name, summary, metrics, evaluation.curves["roc"], registry,
                                          reliability=evaluation.reliability))
        mlflow.log_artifact(str(reports_dir / CARD_FILE))
    metrics["registered_model"] = {"name": name, "version": registry["version"]}
    metrics["registry"] = {"version": registry["version"], "champion": registry["champion"],
                           "rule": registry["rule"], "reasons": registry["reasons"],
                           "comparison": _comparison_record(decision), "subgroup_check": decision.get("subgroups")}
    return metrics


def test_reference_profile(model: keras.Model, evaluation: Evaluation, preprocessing: dict, manifest_file: Path,
                           settings: EvaluateSettings, seed: int, data_source: str | None) -> dict:
    """The test films (a seeded sample of settings.reference_films when more)
    profiled from their originals as `cxr monitor` profiles new films
    (pipeline.monitor.profile), with the served (recalibrated) probabilities.
    The test split: the films the reported figures were measured on, so that
    drift from them says those figures may no longer hold."""
    import numpy as np

    from pipeline.core.progress import Progress
    from pipeline.data.manifest import read_manifest
    from pipeline.monitor.profile import profile_films
    from pipeline.monitor.reference import build_reference

    ids, people = evaluation.scores.ids, evaluation.scores.people
    chosen = list(range(len(ids)))
    if len(ids) > settings.reference_films:
        chosen = sorted(np.random.default_rng(seed).choice(len(ids), settings.reference_films, replace=False))
    paths = read_manifest(manifest_file).set_index("image_id")["path"]
    served = XrayModel(model, evaluation.metrics["thresholds"], preprocessing["image_size"], preprocessing["fit"],
                       recalibration=evaluation.recalibration)

    def patient_of(j: int, _header) -> dict:
        i = chosen[j]
        age = people["age"][i]
        return {"age": None if np.isnan(age) else int(age), "sex": people["sex"][i], "view": people["view"][i],
                "patient_id": int(people["patient_id"][i])}

    profiles = profile_films(served, [paths[ids[i]] for i in chosen], patient_of, settings.batch_size,
                             progress=Progress(len(chosen), "evaluate: reference profile", lines=4))
    return build_reference(profiles, list(FINDINGS), {"split": "test", "films_in_split": len(ids),
                                                      "sampled": len(chosen) < len(ids), "seed": seed,
                                                      "data_source": data_source})


def log_evaluation(mlflow, metrics: dict, settings: EvaluateSettings, tfrecord_dir: Path, reports_dir: Path,
                   plots_dir: Path) -> None:
    """The test figures, params, tables, thresholds, plots and the patient
    fingerprint, logged to the training run before the model is registered."""
    mlflow.log_metrics(rounded({**mlflow_metrics(metrics), **subgroup_mlflow_metrics(metrics["subgroups"]),
                                **strata_mlflow_metrics(metrics.get("strata")),
                                **calibration_mlflow_metrics(metrics["calibration"])}))
    log_evaluate_params(mlflow, dataclasses.asdict(settings))
    log_tables(mlflow, metrics)
    mlflow.log_artifact(str(reports_dir / "thresholds.json"))
    # before registering: a later challenger reads it to leave these patients out (pipeline.model.leakage)
    mlflow.log_dict(fingerprint(split_patient_ids(tfrecord_dir, "train"), split_patient_ids(tfrecord_dir, "val")),
                    FINGERPRINT_FILE)
    mlflow.set_tag("ci_method", metrics["ci_method"])
    mlflow.log_artifacts(str(plots_dir), "plots")


def _comparison_record(decision: dict) -> dict | None:
    """registry.comparison in metrics/evaluate.json: the paired comparison's
    figures and the rule that decided (None when there was no champion to score)."""
    comparison = decision["comparison"]
    if not comparison:
        return None
    keys = ("champion_version", "test_images", "test_patients", "mean_auc_diff", "mean_auc_diff_ci", "auc_diff",
            "auc_diff_ci", "champion_mean_auc", "champion_auc", "champion_image_size", "resamples",
            "findings_compared", "leakage", "operating_points", "mean_ece")
    return {**{key: comparison.get(key) for key in keys}, "rule": decision["rule"]}
