"""Challenger against champion: the registry's champion (whatever its
backbone, image size or inputs) is loaded and scored on this test split by the
same code path, the two are compared on the same images (a paired bootstrap
over patients, pipeline.model.selection), leaving out the films of test
patients the champion trained or tuned on (pipeline.model.leakage), and the
promotion rule (pipeline.model.promotion) decides.

A champion that cannot be loaded or scored (NaN outputs included) means no
promotion, with the reason; so do too few test patients that the champion
never saw. The first version of a model is promoted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.faults import first_line
from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import check_scores, mean_of_defined, operating_point_metrics, per_class_auc, share_films
from pipeline.core.settings import EvaluateSettings
from pipeline.model.audit import split_demographics, subgroup_promotion_check
from pipeline.model.calibration import calibration_report
from pipeline.model.leakage import FINGERPRINT_FILE, load_fingerprint, seen_hashes, unseen_films
from pipeline.model.promotion import RULE_FIRST, RULE_LEAKAGE, RULE_NO_CHAMPION_SCORES, apply_rule
from pipeline.model.registry import champion_version
from pipeline.model.scoring import predict_split
from pipeline.model.selection import paired_auc_comparison


@dataclass(frozen=True)
class SplitScores:
    """A model's scores on the test split: labels and probabilities in `ids`
    order, its thresholds, and each film's patient ("patient_id", "age", "sex", "view")."""

    labels: np.ndarray
    probs: np.ndarray
    ids: list[str]
    thresholds: dict[str, float] | None
    people: dict[str, np.ndarray]

    @classmethod
    def of_split(cls, tfrecord_dir: Path, labels, probs, ids, thresholds=None) -> SplitScores:
        return cls(labels, probs, list(ids), thresholds, split_demographics(tfrecord_dir, "test", list(ids)))

    def films(self, keep: np.ndarray) -> SplitScores:
        return SplitScores(self.labels[keep], self.probs[keep], [i for i, k in zip(self.ids, keep) if k],
                          self.thresholds, {key: values[keep] for key, values in self.people.items()})


@dataclass(frozen=True)
class ScoredChampion:
    version: int
    model: object  # pipeline.serve.api.XrayModel
    scores: SplitScores  # the champion's, on the same films
    fingerprint: dict | None  # its training patients (pipeline.model.leakage), None when it has no record


def champion_decision(registered_name: str, tracking_store: str, tfrecord_dir: Path, challenger: SplitScores,
                      settings: EvaluateSettings, seed: int) -> dict:
    """Whether the new model should take the champion alias. Returns
    {"promote", "rule", "reasons", "champion_version", "comparison", "subgroups", "leakage"}."""
    import mlflow

    from pipeline.serve.api import ModelLoadError

    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    version = champion_version(client, registered_name)
    if version is None:
        return {"promote": True, "rule": RULE_FIRST, "champion_version": None, "comparison": None,
                "reasons": [f"no version of {registered_name} holds the champion alias yet"]}
    try:
        champion = score_champion(registered_name, version, tracking_store, tfrecord_dir, challenger,
                                  settings.batch_size)
    except (ModelLoadError, OSError, ValueError, mlflow.exceptions.MlflowException) as exc:
        return {"promote": False, "rule": RULE_NO_CHAMPION_SCORES, "champion_version": version, "comparison": None,
                "reasons": [f"champion version {version} could not be scored: {first_line(exc)}"]}
    keep, leakage = unseen_films(challenger.people["patient_id"],
                                 seen_hashes(champion.fingerprint) if champion.fingerprint else set())
    leakage["checked"] = champion.fingerprint is not None
    notes = [leakage_note(version, leakage)]
    floor = settings.min_slice_patients
    if leakage["compared_patients"] < max(floor, 1):
        return {"promote": False, "rule": RULE_LEAKAGE, "champion_version": version, "comparison": None,
                "leakage": leakage, "reasons": [*notes, f"too few test patients neither model saw "
                                                        f"(n={leakage['compared_patients']}) < min_slice_patients "
                                                        f"{floor}: no fair comparison"]}
    keep = np.asarray(keep)
    ours, theirs = challenger.films(keep), champion.scores.films(keep)
    comparison = compare(ours, theirs, champion, leakage, settings, seed)
    subgroups = None
    if settings.promotion.subgroups or settings.promotion.strata:
        subgroups = subgroup_promotion_check(
            ours.labels, (theirs.probs, theirs.thresholds), (ours.probs, ours.thresholds), ours.people,
            settings.min_slice_positives, settings.promotion.resamples, seed, settings.min_slice_patients,
            subgroups=settings.promotion.subgroups, strata=settings.promotion.strata)
    outcome = apply_rule(comparison, subgroups, settings.promotion)
    reasons = ([*notes, *outcome.reasons] if leakage["champion_seen_patients"] or not leakage["checked"]
               else outcome.reasons)
    return {"promote": outcome.promote, "rule": outcome.rule, "reasons": reasons, "champion_version": version,
            "comparison": comparison, "subgroups": subgroups, "leakage": leakage}


def score_champion(registered_name: str, version: int, tracking_store: str, tfrecord_dir: Path,
                   challenger: SplitScores, batch_size: int) -> ScoredChampion:
    """The champion loaded from the registry and scored on the challenger's
    test films (its own recalibration applied). ValueError when its scores hold
    NaN or cover other films; what loading raises otherwise."""
    from pipeline.serve.api import load_model

    champion = load_model(f"models:/{registered_name}/{version}", tracking_uri=tracking_store)
    probs, _, ids = predict_split(champion.keras_model, tfrecord_dir, "test", batch_size)
    probs = check_scores(champion.recalibrate(probs), f"champion version {version}'s test")
    if ids != challenger.ids:
        raise ValueError("it was scored on other test records than the new model")
    fingerprint = load_fingerprint(tracking_store, champion.run_id) if champion.run_id else None
    scores = SplitScores(challenger.labels, probs, ids, champion.thresholds, challenger.people)
    return ScoredChampion(version, champion, scores, fingerprint)


def compare(ours: SplitScores, theirs: SplitScores, champion: ScoredChampion, leakage: dict,
            settings: EvaluateSettings, seed: int) -> dict:
    """The paired comparison on the films both are compared on, with the
    champion's own figures and each model's operating points and ECE."""
    comparison = paired_auc_comparison(ours.labels, ours.probs, theirs.probs, list(ours.people["patient_id"]),
                                       resamples=settings.promotion.resamples, seed=seed,
                                       min_positives=settings.min_slice_positives)
    # the champion's AUC where the comparison has one (the same floor as the challenger's)
    champion_auc = {f: (auc if comparison["auc_diff"][f] is not None else None)
                    for f, auc in per_class_auc(ours.labels, theirs.probs).items()}
    comparison.update(champion_version=champion.version, champion_image_size=champion.model.image_size,
                      champion_mean_auc=mean_of_defined(champion_auc), champion_auc=champion_auc,
                      leakage=leakage, **operating_comparison(ours.labels, (theirs.probs, theirs.thresholds),
                                             (ours.probs, ours.thresholds), settings.min_slice_positives))
    return comparison


def operating_comparison(labels: np.ndarray, champion: tuple, challenger: tuple, min_positives: int) -> dict:
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
