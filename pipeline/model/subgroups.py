"""Subgroup evaluation: how the model does for each sex, age band, view and
sex x age band of the test images, in the manner of Seyyed-Kalantari et al.,
"Underdiagnosis bias of artificial intelligence algorithms applied to chest
radiographs in under-served patient populations" (Nature Medicine, 2021).

For each slice: ROC AUC per finding and their mean, sensitivity and specificity
at the operating thresholds, and the underdiagnosis rate: among the slice's
images with at least one finding, the share the model calls "no finding" (no
finding's probability at or above its threshold). Confidence intervals are 95%
percentile intervals over resamples of the slice's patients (all of a patient's
films in the slice move together), computed as resample weights with
metrics.weighted_aucs, so 1000 resamples of every slice take seconds.

Reliability rule (min_slice_positives, default 10; min_slice_patients,
default 10): a finding's AUC and sensitivity need that many positive images in
the slice, its AUC and specificity that many negatives; the underdiagnosis
rate needs that many images with a finding; and every figure of a slice needs
films of at least min_slice_patients patients (one patient's twelve films are
one patient's evidence, and a bootstrap over one patient has no spread). Below
it the value is None and `unreliable` says why, never a figure from a handful
of films. The slice's mean AUC averages the findings whose AUC is given
(reliable in the slice); each resample averages the same findings, leaving out
any that a resample lacks a class for.

Missing ages: an image whose age is missing (NaN, None, or the records'
MISSING_AGE, -1) or outside 0..120 is in no age band and no sex x age slice
(it still counts in its sex and view slices); every report with age slices
says how many such images it left out ("age_unknown").

Gaps: per attribute and metric, the pair of slices whose difference is
largest against its noise (the difference over sqrt(1/n_i + 1/n_j), n a
slice's ill films for the underdiagnosis rate, its films for the mean AUC:
without that, the noisiest small slice decides which gap is the largest),
that difference, a plain 95% bootstrap interval of it (each slice resampled
on its own), and a family-wise permutation p-value. The pair is picked after
looking at all slices, so a test of that pair alone would flag a gap between
equal slices far more often than 5% of the time (with 10 sex x age slices,
most of the time); and a normal approximation to the tails (Bonferroni's z
= 3.26 for 45 pairs) is too thin with few patients per slice (7.7% false
flags at 30 patients a slice). So the reference is the distribution of the
largest standardised gap when slice membership is shuffled: each (patient,
slice) group of films keeps its films and is dealt to a slice at random,
slice sizes kept, and the statistic recomputed; p = (1 + shuffles at least
as large) / (1 + shuffles), and the two metrics are adjusted together
(Westfall and Young's min-p). `flagged` is p <= 0.05: under no true gap
that happens at most 5% of the time whatever the slice sizes (a permutation
test is exact), and a slice whose figures cannot move never flags.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

from pipeline.core.bootstrap import (
    CONFIDENCE,
    RESAMPLE_BLOCK,
    mean_over,
    patient_resample_counts,
    weighted_aucs,
    weighted_share,
)
from pipeline.core.floors import MIN_PATIENTS, MIN_POSITIVES
from pipeline.core.labels import FINDINGS, MAX_AGE, NUM_FINDINGS, SEXES, VIEWS
from pipeline.core.metrics import (
    mean_of_defined,
    operating_point_metrics,
    too_few,
)
from pipeline.model.gap_test import AttributeFilms, min_p_adjusted, permutation_p, shuffled_gaps

# (name, lowest age in the band, first age above it); the lower bound belongs to the band.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-20", 0, 20), ("20-40", 20, 40), ("40-60", 40, 60), ("60-80", 60, 80), ("80+", 80, math.inf),
)
SEX_SLICES = tuple(sorted(SEXES))  # F, M
GAP_METRICS = ("underdiagnosis_rate", "mean_auc")
DEFAULT_RESAMPLES = 1000
# A gap is flagged when its family-wise permutation p-value is at most this.
FLAG_LEVEL = 1 - CONFIDENCE
DIGITS = 4


# --- slices -----------------------------------------------------------------

def age_bands(ages: Sequence) -> np.ndarray:
    """Each image's age band name, "" where the age is missing, negative or
    above MAX_AGE (NIH's few typos such as 414 belong to no band)."""
    years = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(dtype=float)
    bands = np.full(len(years), "", dtype=object)
    for name, low, high in AGE_BANDS:
        bands[(years >= low) & (years < high) & (years <= MAX_AGE)] = name
    return bands


def age_unknown(ages: Sequence) -> dict:
    """{"images": how many images have no age band, "note": the sentence a report
    shows}: the images left out of every age and sex x age slice."""
    images = int((age_bands(ages) == "").sum())
    return {"images": images, "note": f"age unknown: {images} image{'' if images == 1 else 's'}, "
                                      "left out of age slices"}


def _categories(values: Sequence, allowed: Sequence[str]) -> np.ndarray:
    """Values normalised to upper case, "" where not one of `allowed` (missing, "O", ...)."""
    text = np.array(["" if v is None else str(v).strip().upper() for v in values], dtype=object)
    return np.where(np.isin(text, list(allowed)), text, "")


People = Mapping[str, Sequence]  # the test films' patients, a column each: patient_id, age, sex, view


@dataclass(frozen=True)
class SliceAttribute:
    """A patient attribute the subgroup report slices by: its slices from the
    people's columns ({slice name: boolean mask over the images}; an image with a
    missing value is in no slice), how the model card names it, whether a slice
    needs an age, and whether a challenger may not worsen its underdiagnosis
    (evaluate.promotion.subgroups)."""

    name: str
    label: str
    slices: Callable[[People], dict[str, np.ndarray]]
    needs_age: bool = False
    promotion: bool = False


ATTRIBUTES: dict[str, SliceAttribute] = {}


def declare(attribute: SliceAttribute) -> SliceAttribute:
    """A new attribute, declared once: the report, its table and MLflow metrics, the model card and
    (with promotion) the promotion check take it from here."""
    ATTRIBUTES[attribute.name] = attribute
    return attribute


BAND_NAMES = tuple(name for name, _, _ in AGE_BANDS)


def masks_by_value(values: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """{name: values == name}: one slice per value, each column read and normalised once."""
    return {name: values == name for name in names}


def sex_age_slices(people: People) -> dict[str, np.ndarray]:
    sexes, bands = _categories(people["sex"], SEXES), age_bands(people["age"])
    return {f"{s}/{b}": (sexes == s) & (bands == b) for s in SEX_SLICES for b in BAND_NAMES}


declare(SliceAttribute("sex", "sex", lambda p: masks_by_value(_categories(p["sex"], SEXES), SEX_SLICES),
                       promotion=True))
declare(SliceAttribute("age", "age band", lambda p: masks_by_value(age_bands(p["age"]), BAND_NAMES), needs_age=True,
                       promotion=True))
declare(SliceAttribute("view", "view", lambda p: masks_by_value(_categories(p["view"], VIEWS), VIEWS)))
declare(SliceAttribute("sex_age", "sex × age band", sex_age_slices, needs_age=True))


def slice_masks(people: People, attributes: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{attribute: {slice name: boolean mask over the images}}, for every declared attribute (or those named)."""
    return {name: attribute.slices(people) for name, attribute in ATTRIBUTES.items()
            if attributes is None or name in attributes}


# people may carry the evaluate.strata columns too, as "stratum:<column>" (pipeline.model.strata)
STRATUM_PREFIX = "stratum:"
NO_VALUE = ""  # a film whose stratum column is empty: in no stratum


def stratum_values(values: Sequence) -> np.ndarray:
    """A stratum column's values as stripped text, NO_VALUE for an empty or missing one."""
    return np.array([NO_VALUE if v is None else str(v).strip() for v in values], dtype=object)


def stratum_masks(values: Sequence) -> dict[str, np.ndarray]:
    """{value: mask over the films}, for every value but NO_VALUE, in sorted order."""
    text = stratum_values(values)
    return masks_by_value(text, sorted(set(text) - {NO_VALUE}))


def stratum_slices(people: People) -> dict[str, dict[str, np.ndarray]]:
    """{"stratum:<column>": {value: mask}} for each stratum column the people carry."""
    return {key: stratum_masks(people[key]) for key in people if key.startswith(STRATUM_PREFIX)}


def promotion_attributes() -> list[str]:
    """The attributes whose underdiagnosis a challenger may not worsen (promotion check)."""
    return [name for name, attribute in ATTRIBUTES.items() if attribute.promotion]


def threshold_array(thresholds: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    """The 14 operating thresholds in FINDINGS order, from {finding: value} or a sequence."""
    if isinstance(thresholds, Mapping):
        return np.array([float(thresholds[f]) for f in FINDINGS])
    cutoffs = np.asarray(thresholds, dtype=float)
    if cutoffs.shape != (NUM_FINDINGS,):
        raise ValueError(f"thresholds: expected {NUM_FINDINGS} values in FINDINGS order, got shape {cutoffs.shape}")
    return cutoffs


def missed_and_ill(y_true: np.ndarray, y_prob: np.ndarray, cutoffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(missed, ill) per image: ill has at least one finding; missed is ill and
    the model calls no finding (every probability below its threshold)."""
    ill = (np.asarray(y_true) == 1).any(axis=1)
    called_none = ~(np.asarray(y_prob) >= cutoffs[None, :]).any(axis=1)
    return ill & called_none, ill


def _seed_for(seed: int, *names: str) -> int:
    """A seed per slice, so that slices draw independent resamples whatever
    order they are evaluated in, and each is reproducible."""
    key = zlib.crc32("/".join(names).encode())
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])


# --- bootstrap --------------------------------------------------------------

def slice_draws(
    labels: np.ndarray, probs: np.ndarray, reliable: Sequence[int], missed: np.ndarray, ill: np.ndarray,
    patients: Sequence, resamples: int, seed: int,
) -> dict[str, np.ndarray]:
    """Bootstrap over the slice's patients: "auc" (resamples, 14), NaN for the
    findings not in `reliable`; "mean_auc" and "underdiagnosis_rate" (resamples,)."""
    aucs, rates = [], []
    if len(labels) and resamples > 0:
        for counts in patient_resample_counts(patients, resamples, seed, block=RESAMPLE_BLOCK):
            # int32 weights halve the memory traffic of weighted_aucs' gathers (its sums stay int64)
            counts = counts.astype(np.int32)
            block = np.full((len(counts), NUM_FINDINGS), np.nan)
            for i in reliable:
                block[:, i] = weighted_aucs(labels[:, i], probs[:, i], counts)
            aucs.append(block)
            rates.append(weighted_share(counts, missed, ill))
    auc = np.concatenate(aucs) if aucs else np.zeros((0, NUM_FINDINGS))
    return {"auc": auc, "mean_auc": mean_over(auc, reliable),
            "underdiagnosis_rate": np.concatenate(rates) if rates else np.zeros(0)}


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The central `confidence` percentile interval of the defined values; None
    without any, or when they do not vary (every resample of 0 misses is 0: a
    0-0 interval would read as certainty)."""
    defined = values[~np.isnan(values)]
    if not len(defined) or float(np.ptp(defined)) == 0.0:
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(v) for v in np.percentile(defined, [tail, 100 - tail])]


def difference_interval(point: float, draws: np.ndarray, confidence: float) -> list[float] | None:
    """A bootstrap interval of a difference: the percentile interval at CONFIDENCE,
    point +- z x the draws' standard deviation beyond it (the promotion check's
    Bonferroni-adjusted level, where 1000 resamples hold too few draws for a
    percentile); None without spread, which no test may read as certainty."""
    defined = draws[~np.isnan(draws)]
    if len(defined) < 2 or float(np.ptp(defined)) == 0.0:
        return None
    if confidence == CONFIDENCE:
        return interval(defined)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(np.std(defined, ddof=1))
    # a difference of rates or AUCs lies in [-1, 1]
    return [max(point - half, -1.0), min(point + half, 1.0)]


# --- one slice --------------------------------------------------------------

def _ill_reason(ill_images: int) -> str:
    return f"too few images with a finding (n={ill_images})"


def _patients_reason(patients: int) -> str:
    return f"too few patients (n={patients})"


def evaluate_slice(
    labels: np.ndarray, probs: np.ndarray, cutoffs: np.ndarray, patients: Sequence, min_slice_positives: int,
    resamples: int, seed: int, min_slice_patients: int = MIN_PATIENTS,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(figures, bootstrap draws) of one slice's images. The figures' keys:
    n, patients, ill_images, positives, mean_auc, mean_auc_ci, auc, auc_ci,
    sensitivity, specificity, underdiagnosis_rate, underdiagnosis_rate_ci, unreliable."""
    n = len(labels)
    patient_count = int(pd.Series(list(patients), dtype=object).nunique())
    positives = labels.sum(axis=0).astype(int) if n else np.zeros(NUM_FINDINGS, dtype=int)
    # too few patients: no figure of the slice at all, whatever its film counts
    few = _patients_reason(patient_count) if patient_count < max(min_slice_patients, 1) else None
    unreliable = {f: reason for i, f in enumerate(FINDINGS)
                  if (reason := few or too_few(int(positives[i]), n - int(positives[i]), min_slice_positives))}
    reliable = [i for i, f in enumerate(FINDINGS) if f not in unreliable]
    missed, ill = missed_and_ill(labels, probs, cutoffs)
    ill_images = int(ill.sum())
    draws = slice_draws(labels, probs, reliable, missed, ill, patients, 0 if few else resamples, seed)

    # weighted_aucs with unit weights is the plain AUC, and 50x quicker than
    # sklearn's per-call input checks over 19 slices x 14 findings
    unit = np.ones((1, n), dtype=np.int32)
    auc = {f: float(weighted_aucs(labels[:, i], probs[:, i], unit)[0]) if i in reliable else None
           for i, f in enumerate(FINDINGS)}
    mean_auc = mean_of_defined(auc)
    rate = None
    if few:
        unreliable["mean_auc"] = unreliable["underdiagnosis_rate"] = few
    else:
        if mean_auc is None:
            unreliable["mean_auc"] = "no finding has enough positives and negatives in the slice"
        if ill_images >= max(min_slice_positives, 1):
            rate = float(missed.sum() / ill_images)
        else:
            unreliable["underdiagnosis_rate"] = _ill_reason(ill_images)

    operating = operating_point_metrics(labels, probs, dict(zip(FINDINGS, cutoffs)))
    enough = max(min_slice_positives, 1)
    return {
        "n": n,
        "patients": patient_count,
        "ill_images": ill_images,
        "positives": {f: int(positives[i]) for i, f in enumerate(FINDINGS)},
        "mean_auc": mean_auc,
        "mean_auc_ci": interval(draws["mean_auc"]) if mean_auc is not None else None,
        "auc": auc,
        "auc_ci": {f: interval(draws["auc"][:, i]) if auc[f] is not None else None for i, f in enumerate(FINDINGS)},
        "sensitivity": {f: operating["sensitivity"][f] if positives[i] >= enough and not few else None
                        for i, f in enumerate(FINDINGS)},
        "specificity": {f: operating["specificity"][f] if n - positives[i] >= enough and not few else None
                        for i, f in enumerate(FINDINGS)},
        "underdiagnosis_rate": rate,
        "underdiagnosis_rate_ci": interval(draws["underdiagnosis_rate"]) if rate is not None else None,
        "unreliable": unreliable,
    }, draws


# --- gaps -------------------------------------------------------------------

def attribute_gaps(
    attribute: str, figures: dict[str, dict], draws: dict[str, dict], films: AttributeFilms | None = None,
    permutations: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> list:
    """The largest gap between the attribute's slices, per GAP_METRICS: keys
    attribute, metric, high, low (the pair of slices whose difference is
    largest against its noise, sqrt(1/n_high + 1/n_low) with n the slice's
    ill films or films; without `films`, the highest and lowest slice),
    difference (high - low), ci (plain 95% bootstrap interval of that pair's
    difference), p_value (the family-wise permutation test of the module's
    notes, over the attribute's slices and both metrics), test, permutations,
    slices_compared, flagged (p_value <= 0.05), and reason where fewer than
    two slices have the metric (high, low, difference, ci None)."""
    gaps, compared = [], {}
    for metric in GAP_METRICS:
        values = {name: fig[metric] for name, fig in figures.items() if fig[metric] is not None}
        gap = {"attribute": attribute, "metric": metric, "high": None, "low": None, "difference": None,
               "ci": None, "confidence": CONFIDENCE, "p_value": None, "slices_compared": len(values),
               "flagged": False}
        if len(values) < 2:
            gaps.append({**gap, "reason": f"{len(values)} slice(s) with a {metric}: nothing to compare"})
            continue
        compared[metric] = {name: [i for i, f in enumerate(FINDINGS) if figures[name]["auc"][f] is not None]
                            for name in values}
        ordered = sorted(values, key=values.get)
        gaps.append({**gap, "high": ordered[-1], "low": ordered[0]})
    tested = [gap for gap in gaps if gap["metric"] in compared]
    if films is not None and permutations > 0 and tested:
        shuffled = shuffled_gaps(films, compared, permutations, _seed_for(seed, "permutation", attribute))
        single = {metric: permutation_p(float(largest[0]), values)
                  for metric, (values, _, largest) in shuffled.items()}
        adjusted = min_p_adjusted(single, {metric: values for metric, (values, _, _) in shuffled.items()})
        for gap in tested:
            names = list(compared[gap["metric"]])
            high, low = shuffled[gap["metric"]][1]
            if high != low:  # a pair with a gap (else every slice alike: keep the extremes)
                gap.update(high=names[high], low=names[low])
            gap.update(p_value=adjusted[gap["metric"]], permutations=permutations,
                       test="largest standardised gap among the slices, both metrics adjusted together (min-p); "
                            "slice membership shuffled by patient")
    for gap in tested:
        metric, high, low = gap["metric"], gap["high"], gap["low"]
        gap["difference"] = figures[high][metric] - figures[low][metric]
        # the two slices' resamples are independent draws, so row k of each pairs freely
        gap["ci"] = difference_interval(gap["difference"], draws[high][metric] - draws[low][metric], CONFIDENCE)
        gap["flagged"] = bool(gap["p_value"] is not None and gap["difference"] > 0 and gap["p_value"] <= FLAG_LEVEL)
    return gaps


# --- the report -------------------------------------------------------------

def rounded(value, digits: int = DIGITS):
    """A copy of plain data with every float rounded (and NaN as None): JSON-ready."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _checked(y_true, y_prob, people: People) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, probs = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    patients = np.asarray(list(people["patient_id"]), dtype=object)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != NUM_FINDINGS:
        raise ValueError(f"y_true and y_prob must both be (images, {NUM_FINDINGS}), got {labels.shape} and "
                         f"{probs.shape}")
    if any(len(people[column]) != len(labels) for column in people.keys()):
        raise ValueError(f"the people's columns ({', '.join(people.keys())}) need one value per test image")
    return labels, probs, patients


def subgroup_report(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: Mapping[str, float] | Sequence[float],
    people: People, min_slice_positives: int = MIN_POSITIVES, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    min_slice_patients: int = MIN_PATIENTS, permutations: int | None = None,
    attributes: Sequence[str] | None = None,
) -> dict:
    """The subgroup evaluation of one model's test predictions, JSON-ready
    (floats to DIGITS decimals): {"sex": {"F": figures, "M": ...}, "age":
    {"0-20": ...}, "view": {"PA", "AP"}, "sex_age": {"F/0-20": ...}, "gaps":
    [gap, ...], "age_unknown": {"images", "note"}, "settings": {...}} with
    figures as evaluate_slice's, gaps as attribute_gaps' and age_unknown as
    age_unknown's. thresholds: {finding: value} (as evaluate's) or 14 values.
    The gap test shuffles `permutations` times (default: `resamples`)."""
    labels, probs, patients = _checked(y_true, y_prob, people)
    cutoffs = threshold_array(thresholds)
    missed, ill = missed_and_ill(labels, probs, cutoffs)
    permutations = resamples if permutations is None else permutations
    report: dict = {}
    gaps = []
    for attribute, masks in slice_masks(people, attributes).items():
        figures, draws = {}, {}
        slice_of = np.full(len(labels), "", dtype=object)
        for name, mask in masks.items():
            slice_of[mask] = name
            figures[name], draws[name] = evaluate_slice(
                labels[mask], probs[mask], cutoffs, patients[mask], min_slice_positives, resamples,
                _seed_for(seed, attribute, name), min_slice_patients)
        report[attribute] = figures
        films = AttributeFilms(labels, probs, missed, ill, slice_of, patients)
        gaps.extend(attribute_gaps(attribute, figures, draws, films, permutations, seed))
    report["gaps"] = gaps
    report["age_unknown"] = age_unknown(people["age"])
    report["settings"] = {"min_slice_positives": min_slice_positives, "min_slice_patients": min_slice_patients,
                          "resamples": resamples, "permutations": permutations, "seed": seed,
                          "flag_level": FLAG_LEVEL, "images": len(labels),
                          "patients": int(pd.Series(patients).nunique())}
    return rounded(report)


def subgroup_mlflow_metrics(report: dict) -> dict[str, float]:
    """The subgroup figures a runs table sorts on: per gap
    subgroup_gap_<metric>_<attribute> (and _flagged, 0/1), and
    test_images_age_unknown (the images in no age slice). Each slice's figures
    are rows of subgroup_table, logged as a table: as metrics they were ~100
    columns, and a slice too small to score vanished from them silently."""
    scalar: dict[str, float | None] = {}
    if "age_unknown" in report:  # reports written before the count have none
        scalar["test_images_age_unknown"] = report["age_unknown"]["images"]
    for gap in report["gaps"]:
        if gap["difference"] is not None:
            scalar[f"subgroup_gap_{gap['metric']}_{gap['attribute']}"] = gap["difference"]
            scalar[f"subgroup_gap_{gap['metric']}_{gap['attribute']}_flagged"] = float(gap["flagged"])
    return {k: float(v) for k, v in scalar.items() if v is not None}


def subgroup_table(report: dict) -> list[dict]:
    """One row per slice of a subgroup_report: attribute, slice, images,
    patients, ill images, mean AUC and underdiagnosis rate with their 95% CIs,
    and why a figure is missing (a slice too small to score says so)."""
    rows = []
    for attribute in [a for a in ATTRIBUTES if a in report]:
        for name, figures in report[attribute].items():
            row = {"attribute": attribute, "slice": name, "images": figures.get("n"),
                   "patients": figures.get("patients"), "ill_images": figures.get("ill_images")}
            unreliable = figures.get("unreliable") or {}
            for metric in ("mean_auc", "underdiagnosis_rate"):
                low, high = figures.get(f"{metric}_ci") or (None, None)
                row.update({metric: figures.get(metric), f"{metric}_ci_low": low, f"{metric}_ci_high": high,
                            f"{metric}_missing_reason": unreliable.get(metric) if figures.get(metric) is None
                            else None})
            rows.append(row)
    return rows


# --- promotion check --------------------------------------------------------

def underdiagnosis_regression(
    y_true: np.ndarray, champion_prob: np.ndarray, champion_thresholds, challenger_prob: np.ndarray,
    challenger_thresholds, people: People, min_slice_positives: int = MIN_POSITIVES,
    resamples: int = DEFAULT_RESAMPLES, seed: int = 0, familywise: bool = True, min_slice_patients: int = MIN_PATIENTS,
    attributes: Sequence[str] | None = None, strata: bool = False,
) -> dict:
    """Whether the challenger underdiagnoses any sex or age slice significantly
    more than the champion, on the same test images, each at its own thresholds.
    `attributes`: the declared attributes checked (default promotion_attributes());
    with `strata`, every stratum column the people carry (STRATUM_PREFIX) too.
    Per slice, a paired bootstrap over the slice's patients (the same draws
    weight both models) of challenger minus champion underdiagnosis rate;
    `worse` when the interval's lower bound is above 0. With familywise, the
    intervals are Bonferroni-adjusted over the slices checked (difference_interval), so a
    challenger as good as the champion is not refused by one of seven chances.

    Returns {"sex": {"F": entry, "M": ...}, "age": {"0-20": ...}, "worse_slices":
    ["sex/F", ...], "confidence": level, "age_unknown": {"images", "note"}};
    entry: n, ill_images, champion_rate, challenger_rate, difference, ci, worse,
    and reason where the slice has fewer than min_slice_positives ill images
    (then rates, difference and ci None)."""
    labels, champion, patients = _checked(y_true, champion_prob, people)
    challenger = np.asarray(challenger_prob, dtype=float)
    if challenger.shape != champion.shape:
        raise ValueError("the champion's and the challenger's predictions must cover the same images")
    missed_champion, ill = missed_and_ill(labels, champion, threshold_array(champion_thresholds))
    missed_challenger, _ = missed_and_ill(labels, challenger, threshold_array(challenger_thresholds))
    masks = slice_masks(people, promotion_attributes() if attributes is None else attributes)
    if strata:
        masks.update(stratum_slices(people))
    checked = sum(len(slices) for slices in masks.values())
    confidence = 1 - (1 - CONFIDENCE) / checked if familywise else CONFIDENCE
    result: dict = {"worse_slices": [], "confidence": confidence, "age_unknown": age_unknown(people["age"])}
    for attribute in masks:
        result[attribute] = {}
        for name, mask in masks[attribute].items():
            entry = _paired_rate_difference(
                missed_champion[mask], missed_challenger[mask], ill[mask], patients[mask],
                min_slice_positives, resamples, _seed_for(seed, "promotion", attribute, name), confidence,
                min_slice_patients)
            result[attribute][name] = entry
            if entry["worse"]:
                result["worse_slices"].append(f"{attribute}/{name}")
    return rounded(result)


def _paired_rate_difference(
    missed_champion: np.ndarray, missed_challenger: np.ndarray, ill: np.ndarray, patients: np.ndarray,
    min_slice_positives: int, resamples: int, seed: int, confidence: float,
    min_slice_patients: int = MIN_PATIENTS,
) -> dict:
    ill_images = int(ill.sum())
    ill_patients = int(pd.Series(list(patients[ill]), dtype=object).nunique())
    entry = {"n": len(ill), "ill_images": ill_images, "ill_patients": ill_patients, "champion_rate": None,
             "challenger_rate": None, "difference": None, "ci": None, "worse": False}
    if ill_images < max(min_slice_positives, 1):
        return {**entry, "reason": _ill_reason(ill_images)}
    if ill_patients < max(min_slice_patients, 1):
        return {**entry, "reason": _patients_reason(ill_patients)}
    champion_rate = float(missed_champion.sum() / ill_images)
    challenger_rate = float(missed_challenger.sum() / ill_images)
    differences = [weighted_share(counts, missed_challenger, ill) - weighted_share(counts, missed_champion, ill)
                   for counts in patient_resample_counts(patients, resamples, seed)] if resamples > 0 else []
    difference = challenger_rate - champion_rate
    ci = difference_interval(difference, np.concatenate(differences), confidence) if differences else None
    extra = {} if ci is not None or not differences else {
        "reason": "no spread: every resample gives the same difference, so it cannot be tested"}
    return {**entry, "champion_rate": champion_rate, "challenger_rate": challenger_rate, "difference": difference,
            "ci": ci, "worse": ci is not None and ci[0] > 0, **extra}
