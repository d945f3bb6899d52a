"""The evaluate stage: score the trained model on test (thresholds from val),
write the reports DVC plots and explain read, re-score the registry's champion
on the same test images and compare the two (pipeline.model.selection),
register the model in MLflow with that decision, and write its model card."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.core.atomic import atomic_dir, write_csv_atomic, write_json_atomic, write_text_atomic
from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import image_size_of, load_keras_model, uses_patient_metadata
from pipeline.core.patient import IMAGE_INPUT, PATIENT_ENCODING
from pipeline.core.tracking import configure_mlflow, data_hash, git_commit, log_table, metric_name, resume_run
from pipeline.model.audit import (
    DEFAULT_CALIBRATION_BINS,
    DEFAULT_MIN_SLICE_PATIENTS,
    DEFAULT_MIN_SLICE_POSITIVES,
    calibration_mlflow_metrics,
    calibration_section,
    recalibrate,
    reliability_tables,
    split_demographics,
    split_patient_ids,
    subgroup_promotion_check,
)
from pipeline.model.calibration import calibration_report
from pipeline.model.leakage import FINGERPRINT_FILE, fingerprint, load_fingerprint, seen_hashes, unseen_films
from pipeline.model.metrics import (
    check_scores,
    curves,
    evaluation_metrics,
    manifest_hash,
    mean_of_defined,
    operating_point_metrics,
    per_class_auc,
    predictions_table,
    share_films,
)
from pipeline.model.model_card import CARD_FILE, model_card_html
from pipeline.model.registry import champion_version, register_decided, registry_model_metadata
from pipeline.model.selection import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_CLASS_DROP,
    RULE_FIRST,
    RULE_LEAKAGE,
    RULE_NO_CHAMPION_SCORES,
    RULE_SUBGROUP,
    paired_auc_comparison,
    promotion_decision,
    subgroup_refusals,
)
from pipeline.model.subgroups import subgroup_mlflow_metrics, subgroup_report, subgroup_table
from pipeline.records.dataset import make_dataset, read_shard_index, shard_files

# Figures logged to MLflow once per finding, as <prefix>_<finding>: the AUC
# and the threshold, which runs are sorted and compared on. The rest of each
# finding's figures is one row of the logged table FINDING_TABLE.
PER_FINDING_METRICS = {
    "auc": "test_auc", "auc_ci_low": "test_auc_ci_low", "auc_ci_high": "test_auc_ci_high", "thresholds": "threshold",
}
FINDING_TABLE = "tables/test_by_finding.json"  # MLflow artifacts: the UI shows them as tables
SLICE_TABLE = "tables/test_by_slice.json"
FINDING_COLUMNS = ("auc", "auc_ci_low", "auc_ci_high", "auprc", "thresholds", "sensitivity", "specificity", "ppv",
                   "npv", "f1", "accuracy")
AUC_PLOT_FILE = "auc_by_finding.csv"  # in paths.evaluate_plots (reports/plots/)
RELIABILITY_PLOT_FILE = "reliability.csv"  # in paths.evaluate_plots: the pooled curve
RELIABILITY_FILE = "reliability.csv"  # in reports/evaluate/: every finding's curve
REPORT_FILE = "evaluate.json"  # in reports/evaluate/: the whole record, metrics/evaluate.json its summary
IMAGE_INPUT_DESCRIPTION = "float32 grey values 0..255, shape (size, size, 1)"


def predict_split(model: keras.Model, tfrecord_dir: Path, split: str, batch_size: int = 16):
    """Stream a split through the model: (probabilities, labels, image ids).
    A model that takes another image size than the shards' (a champion trained
    at 224 px, say) gets the shard images area-resized to its size."""
    probs, labels, ids = [], [], []
    files = shard_files(tfrecord_dir, split)
    if not files:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    size = image_size_of(model)
    for inputs, y, image_ids in make_dataset(files, batch_size, with_ids=True, metadata=uses_patient_metadata(model)):
        probs.append(model.predict_on_batch(_resized(inputs, size)))
        labels.append(y.numpy())
        ids.extend(i.decode() for i in image_ids.numpy())
    if not probs:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64), ids


def _resized(inputs, size: int):
    images = inputs[IMAGE_INPUT] if isinstance(inputs, dict) else inputs
    if images.shape[1] == size:
        return inputs
    images = tf.image.resize(images, (size, size), method="area")
    return {**inputs, IMAGE_INPUT: images} if isinstance(inputs, dict) else images


def champion_decision(
    registered_name: str, tracking_store: str, tfrecord_dir: Path, batch_size: int, test_labels: np.ndarray,
    test_probs: np.ndarray, test_ids: list[str], promotion: dict, seed: int,
    thresholds: dict[str, float] | None = None, people: dict[str, np.ndarray] | None = None,
    min_slice_positives: int = DEFAULT_MIN_SLICE_POSITIVES, min_slice_patients: int = DEFAULT_MIN_SLICE_PATIENTS,
) -> dict:
    """Whether the new model should take the champion alias: the current
    champion (whatever its backbone, image size or inputs) is loaded and
    scored on this test split by the same code path, and the two are compared
    on the same images (a paired bootstrap over patients), leaving out the
    films of test patients the champion trained or tuned on (its run's
    patient fingerprint, pipeline.model.leakage). A champion that cannot be
    loaded or scored (NaN outputs included) means no promotion, with the
    reason; so do too few test patients that the champion never saw. The
    first version of a model is promoted. With promotion.subgroups, a
    challenger whose underdiagnosis rate rises significantly in a sex or age
    slice (each model at its own thresholds) is refused too. Returns
    {"promote", "rule", "reasons", "champion_version", "comparison", "subgroups", "leakage"}."""
    import mlflow

    from pipeline.serve.predict import ModelLoadError, load_model

    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    version = champion_version(client, registered_name)
    if version is None:
        return {"promote": True, "rule": RULE_FIRST, "champion_version": None, "comparison": None,
                "reasons": [f"no version of {registered_name} holds the champion alias yet"]}
    people = people if people is not None else split_demographics(tfrecord_dir, "test", test_ids)
    try:
        champion = load_model(f"models:/{registered_name}/{version}", tracking_uri=tracking_store)
        champion_probs, _, champion_ids = predict_split(champion.keras_model, tfrecord_dir, "test", batch_size)
        champion_probs = check_scores(champion.recalibrate(champion_probs), f"champion version {version}'s test")
        if champion_ids != test_ids:
            raise ValueError("it was scored on other test records than the new model")
        fingerprint = load_fingerprint(tracking_store, champion.run_id) if champion.run_id else None
    except (ModelLoadError, OSError, ValueError, mlflow.exceptions.MlflowException) as exc:
        return {"promote": False, "rule": RULE_NO_CHAMPION_SCORES, "champion_version": version, "comparison": None,
                "reasons": [f"champion version {version} could not be scored: {_one_line(exc)}"]}
    keep, leakage = unseen_films(people["patient_id"], seen_hashes(fingerprint) if fingerprint else set())
    leakage["checked"] = fingerprint is not None
    notes = [leakage_note(version, leakage)]
    if leakage["compared_patients"] < max(min_slice_patients, 1):
        return {"promote": False, "rule": RULE_LEAKAGE, "champion_version": version, "comparison": None,
                "leakage": leakage, "reasons": [*notes, f"too few test patients neither model saw "
                                                        f"(n={leakage['compared_patients']}) < min_slice_patients "
                                                        f"{min_slice_patients}: no fair comparison"]}
    keep = np.asarray(keep)
    labels, ours, theirs = test_labels[keep], test_probs[keep], champion_probs[keep]
    unseen = {key: values[keep] for key, values in people.items()}
    resamples = int(promotion.get("resamples", 1000))
    comparison = paired_auc_comparison(labels, ours, theirs, list(unseen["patient_id"]), resamples=resamples,
                                       seed=seed, min_positives=min_slice_positives)
    # the champion's AUC where the comparison has one (the same floor as the challenger's)
    champion_auc = {f: (auc if comparison["auc_diff"][f] is not None else None)
                    for f, auc in per_class_auc(labels, theirs).items()}
    comparison.update(champion_version=version, champion_image_size=champion.image_size,
                      champion_mean_auc=mean_of_defined(champion_auc), champion_auc=champion_auc, leakage=leakage,
                      **operating_comparison(labels, (theirs, champion.thresholds), (ours, thresholds),
                                             min_slice_positives))
    promote, rule, reasons = promotion_decision(
        comparison, float(promotion.get("margin", DEFAULT_MARGIN)),
        float(promotion.get("max_class_drop", DEFAULT_MAX_CLASS_DROP)),
    )
    reasons = [*notes, *reasons] if leakage["champion_seen_patients"] or not leakage["checked"] else reasons
    subgroups = None
    if promotion.get("subgroups"):
        subgroups = subgroup_promotion_check(
            labels, (theirs, champion.thresholds), (ours, thresholds), unseen,
            min_slice_positives, resamples, seed, min_slice_patients)
        refusals = subgroup_refusals(subgroups)
        if refusals:
            promote, rule, reasons = False, (rule if not promote else RULE_SUBGROUP), [*reasons, *refusals]
    return {"promote": promote, "rule": rule, "reasons": reasons, "champion_version": version,
            "comparison": comparison, "subgroups": subgroups, "leakage": leakage}


def operating_comparison(labels: np.ndarray, champion: tuple, challenger: tuple,
                         min_positives: int = DEFAULT_MIN_SLICE_POSITIVES) -> dict:
    """Each model's sensitivity and specificity at its own thresholds and its
    mean ECE, on the films they are compared on: {"operating_points":
    {"champion": {"sensitivity": {...}, "specificity": {...}}, "challenger": ...},
    "mean_ece": {"champion", "challenger"}} (no operating points without the
    challenger's thresholds). A sensitivity on fewer than min_positives
    positive films, or a specificity on fewer negatives, is None."""
    figures = {"mean_ece": {}, "operating_points": {}}
    positives = np.asarray(labels).sum(axis=0).astype(int) if len(labels) else np.zeros(len(FINDINGS), dtype=int)
    for role, (probs, thresholds) in (("champion", champion), ("challenger", challenger)):
        figures["mean_ece"][role] = calibration_report(labels, probs)["mean_ece"]
        if thresholds is not None:
            points = operating_point_metrics(labels, probs, thresholds)
            figures["operating_points"][role] = {
                key: {f: (points[key][f] if share_films(key, int(positives[i]), len(labels)) >= min_positives
                          else None) for i, f in enumerate(FINDINGS)}
                for key in ("sensitivity", "specificity")}
    return figures


def leakage_note(version: int, leakage: dict) -> str:
    """The decision's sentence on which test patients the comparison used."""
    if not leakage["checked"]:
        return (f"champion version {version} has no record of its training patients "
                f"({FINGERPRINT_FILE}): compared on all {leakage['test_patients']} test patients, unchecked for "
                "leakage")
    if not leakage["champion_seen_patients"]:
        return (f"champion version {version} trained on none of the {leakage['test_patients']} test patients: "
                "compared on all of them")
    return (f"champion version {version} trained or tuned on {leakage['champion_seen_patients']} of the "
            f"{leakage['test_patients']} test patients ({leakage['champion_seen_images']} films): compared on the "
            f"{leakage['compared_patients']} patients ({leakage['compared_images']} films) neither model saw")


def evaluation_summary(metrics: dict) -> dict:
    """metrics/evaluate.json: the few scalars DVC shows and diffs; the rest of
    `metrics` goes to reports/evaluate/evaluate.json under the same keys."""
    low, high = metrics["mean_auc_ci"]
    return {"mean_auc": metrics["mean_auc"], "auc_ci_low": low, "auc_ci_high": high,
            "mean_ece": metrics["calibration"]["mean_ece"]}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def auc_table(metrics: dict) -> pd.DataFrame:
    """Test AUC and its 95% CI per finding (those defined on test): a bar chart
    in `dvc plots`, so that `dvc plots diff` compares experiments finding by finding."""
    rows = [{"finding": f, "auc": round(auc, 4), "ci_low": _rounded(metrics["auc_ci_low"][f]),
             "ci_high": _rounded(metrics["auc_ci_high"][f])}
            for f, auc in metrics["auc"].items() if auc is not None]
    return pd.DataFrame(rows, columns=["finding", "auc", "ci_low", "ci_high"])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, LOGGED_DIGITS)


def split_sizes(tfrecord_dir: Path) -> dict[str, int]:
    return {split: int(entry["records"]) for split, entry in read_shard_index(tfrecord_dir)["splits"].items()}


def evaluate_model(
    model_file: Path, tfrecord_dir: Path, reports_dir: Path, plots_dir: Path, run_file: Path, settings: dict,
    mlflow_settings: dict, training: dict, seed: int,
) -> dict:
    """The evaluate stage. `settings` is params.yaml's evaluate section,
    `mlflow_settings` its mlflow section, `training` the params the model
    was trained with ({"backbone", "image_size", "fit", "params": {...}}).
    Writes reports_dir (test_predictions.csv, thresholds.json, model card)
    and replaces plots_dir whole (the curves `dvc plots` draws); returns the
    metrics, with the registry's decision."""
    batch = int(settings["batch_size"])
    model = load_keras_model(model_file)
    val_probs, val_labels, _ = predict_split(model, tfrecord_dir, "val", batch)
    raw_test_probs, test_labels, test_ids = predict_split(model, tfrecord_dir, "test", batch)
    method = settings.get("calibration", "none")
    recalibration, val_probs, test_probs = recalibrate(method, (val_labels, val_probs), raw_test_probs)
    resamples = int(settings["bootstrap"])
    min_positives = int(settings.get("min_slice_positives", DEFAULT_MIN_SLICE_POSITIVES))
    min_patients = int(settings.get("min_slice_patients", DEFAULT_MIN_SLICE_PATIENTS))
    people = split_demographics(tfrecord_dir, "test", test_ids)
    metrics = evaluation_metrics(
        (val_labels, val_probs), (test_labels, test_probs), settings["threshold_method"],
        target_sensitivity=float(settings["target_sensitivity"]), resamples=resamples, seed=seed,
        test_patients=people["patient_id"], min_positives=min_positives, min_patients=min_patients,
    )
    test_manifest = manifest_hash(test_ids, test_labels)
    metrics["test_manifest"] = test_manifest
    metrics["subgroups"] = subgroup_report(
        test_labels, test_probs, metrics["thresholds"], people["patient_id"], people["age"], people["sex"],
        people["view"], min_slice_positives=min_positives, resamples=resamples, seed=seed,
        min_slice_patients=min_patients)
    metrics["calibration"], reliability = calibration_section(
        test_labels, raw_test_probs, test_probs, method, int(settings.get("calibration_bins",
                                                                          DEFAULT_CALIBRATION_BINS)))
    if recalibration:
        metrics["calibration"]["fitted"] = recalibration
    test_curves = curves(test_labels, test_probs)
    write_csv_atomic(predictions_table(test_ids, test_labels, test_probs), reports_dir / "test_predictions.csv")
    write_json_atomic(reports_dir / "thresholds.json", metrics["thresholds"])
    every_finding, pooled = reliability_tables(metrics["calibration"], reliability)
    write_csv_atomic(pd.DataFrame(every_finding), reports_dir / RELIABILITY_FILE)
    # whole, so that no curve of a finding this run could not draw is left from an earlier one
    with atomic_dir(plots_dir) as folder:
        write_curves(test_curves, folder)
        write_csv_atomic(auc_table(metrics), folder / AUC_PLOT_FILE)
        write_csv_atomic(pd.DataFrame(pooled).drop(columns="finding"), folder / RELIABILITY_PLOT_FILE)

    with_patient = uses_patient_metadata(model)
    summary = {"split_sizes": split_sizes(tfrecord_dir), "data_hash": data_hash(tfrecord_dir),
               "git_commit": git_commit(), "test_manifest": test_manifest, "backbone": training["backbone"],
               "image_size": training["image_size"], "fit": training["fit"], "data_source": training.get("data_source"),
               "inputs": "image and patient metadata (age, sex, view)" if with_patient else "image only"}
    preprocessing = {"image_size": training["image_size"], "fit": training["fit"], "input": IMAGE_INPUT_DESCRIPTION}
    if with_patient:
        preprocessing["input"] = {"image": IMAGE_INPUT_DESCRIPTION, "metadata": PATIENT_ENCODING}
    name = mlflow_settings["registered_model"]
    mlflow = configure_mlflow(mlflow_settings["experiment"], mlflow_settings.get("timeout_s"))

    def decide() -> dict:
        return champion_decision(name, mlflow.get_tracking_uri(), tfrecord_dir, batch, test_labels, test_probs,
                                 test_ids, settings.get("promotion") or {}, seed, thresholds=metrics["thresholds"],
                                 people=people, min_slice_positives=min_positives, min_slice_patients=min_patients)

    with resume_run(mlflow, run_file):
        mlflow.log_metrics(rounded({**mlflow_metrics(metrics), **subgroup_mlflow_metrics(metrics["subgroups"]),
                                    **calibration_mlflow_metrics(metrics["calibration"])}))
        log_evaluate_params(mlflow, settings)
        log_tables(mlflow, metrics)
        mlflow.log_artifact(str(reports_dir / "thresholds.json"))
        # before registering: a later challenger reads it to leave these patients out (pipeline.model.leakage)
        mlflow.log_dict(fingerprint(split_patient_ids(tfrecord_dir, "train"), split_patient_ids(tfrecord_dir, "val")),
                        FINGERPRINT_FILE)
        mlflow.set_tag("ci_method", metrics["ci_method"])
        mlflow.log_artifacts(str(plots_dir), "plots")
        # Decided and registered in one step (pipeline.model.registry.register_decided),
        # so that two evaluations at once cannot both take the champion alias.
        registry = register_decided(
            mlflow, model, name,
            registry_model_metadata(metrics["thresholds"], preprocessing, metrics, test_manifest, recalibration,
                                    data_source=training.get("data_source")),
            {"data_hash": summary["data_hash"], "git_commit": summary["git_commit"], "backbone": training["backbone"]},
            decide, params=training["params"], card_artifact=CARD_FILE,
        )
        decision = registry["decision"]
        if decision["comparison"]:
            mlflow.log_metrics(rounded(comparison_metrics(decision["comparison"])))
        registry["comparison"] = decision["comparison"]
        write_text_atomic(reports_dir / CARD_FILE,
                          model_card_html(name, summary, metrics, test_curves["roc"], registry,
                                          reliability=reliability))
        mlflow.log_artifact(str(reports_dir / CARD_FILE))
    metrics["registered_model"] = {"name": name, "version": registry["version"]}
    metrics["registry"] = {"version": registry["version"], "champion": registry["champion"],
                           "rule": registry["rule"], "reasons": registry["reasons"],
                           "comparison": _comparison_record(decision), "subgroup_check": decision.get("subgroups")}
    return metrics


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
