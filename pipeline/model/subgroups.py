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

Reliability rule (min_slice_positives, default 10): a finding's AUC and
sensitivity need that many positive images in the slice, its AUC and
specificity that many negatives; the underdiagnosis rate needs that many images
with a finding. Below it the value is None and `unreliable` says why, never a
figure from a handful of films. The slice's mean AUC averages the findings
whose AUC is given (reliable in the slice); each resample averages the same
findings, leaving out any that a resample lacks a class for.

Missing ages: an image whose age is missing (NaN, None, or the records'
MISSING_AGE, -1) or outside 0..120 is in no age band and no sex x age slice
(it still counts in its sex and view slices); every report with age slices
says how many such images it left out ("age_unknown").

Gaps: per attribute and metric, the slices with the highest and lowest value,
their difference and a bootstrap interval of it, each slice resampled on its
own. The pair is picked after looking at all slices, so a plain 95% interval
would flag a gap between equal slices far more often than 5% of the time (with
10 sex x age slices, most of the time). The interval is therefore family-wise
(Bonferroni over the attribute's k(k-1)/2 slice pairs; for two slices it is the
plain 95% interval); `familywise=False` gives plain intervals. A family-wise
interval reaches far into the tails (0.06% each side for 45 pairs), where 1000
resamples hold less than one draw and a percentile is mostly noise, so it is
difference +- z x the bootstrap standard error of the difference instead; plain
95% intervals are percentile intervals.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

from pipeline.core.labels import FINDINGS, MAX_AGE, NUM_FINDINGS, SEXES, VIEWS
from pipeline.core.tracking import metric_name
from pipeline.model.metrics import (
    CONFIDENCE,
    mean_of_defined,
    operating_point_metrics,
    weighted_aucs,
)
from pipeline.model.selection import patient_resample_counts

# (name, lowest age in the band, first age above it); the lower bound belongs to the band.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-20", 0, 20), ("20-40", 20, 40), ("40-60", 40, 60), ("60-80", 60, 80), ("80+", 80, math.inf),
)
SEX_SLICES = tuple(sorted(SEXES))  # F, M
ATTRIBUTES = ("sex", "age", "view", "sex_age")
# The attributes whose underdiagnosis a challenger may not worsen (promotion check).
PROMOTION_ATTRIBUTES = ("sex", "age")
GAP_METRICS = ("underdiagnosis_rate", "mean_auc")
DEFAULT_MIN_SLICE_POSITIVES = 10
DEFAULT_RESAMPLES = 1000
DIGITS = 4
# Resamples per block: weighted_aucs sorts a finding's negatives once a block,
# so larger blocks sort less; 200 x 25,596 int32 weights is 20 MB.
RESAMPLE_BLOCK = 200


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


def slice_masks(ages: Sequence, sexes: Sequence, views: Sequence) -> dict[str, dict[str, np.ndarray]]:
    """{attribute: {slice name: boolean mask over the images}}; an image with a
    missing value is in no slice of that attribute."""
    sex, view, band = _categories(sexes, SEXES), _categories(views, VIEWS), age_bands(ages)
    band_names = [name for name, _, _ in AGE_BANDS]
    return {
        "sex": {s: sex == s for s in SEX_SLICES},
        "age": {b: band == b for b in band_names},
        "view": {v: view == v for v in VIEWS},
        "sex_age": {f"{s}/{b}": (sex == s) & (band == b) for s in SEX_SLICES for b in band_names},
    }


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

def weighted_share(counts: np.ndarray, hits: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Per row of image weights: weighted hits / weighted `of` (NaN where none of `of` was drawn)."""
    numerator = counts @ hits.astype(np.int64)
    denominator = counts @ of.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def mean_over_findings(aucs: np.ndarray, findings: Sequence[int]) -> np.ndarray:
    """Per resample, the mean AUC of `findings`, leaving out those a resample lacks a class for."""
    chosen = aucs[:, list(findings)]
    counted = (~np.isnan(chosen)).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(counted > 0, np.nansum(chosen, axis=1) / np.maximum(counted, 1), np.nan)


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
    return {"auc": auc, "mean_auc": mean_over_findings(auc, reliable),
            "underdiagnosis_rate": np.concatenate(rates) if rates else np.zeros(0)}


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The central `confidence` percentile interval of the defined values; None without any."""
    defined = values[~np.isnan(values)]
    if not len(defined):
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(v) for v in np.percentile(defined, [tail, 100 - tail])]


def difference_interval(point: float, draws: np.ndarray, confidence: float) -> list[float] | None:
    """A bootstrap interval of a difference: the percentile interval at CONFIDENCE,
    point +- z x the draws' standard deviation beyond it (see the module's notes)."""
    if confidence == CONFIDENCE:
        return interval(draws)
    defined = draws[~np.isnan(draws)]
    if len(defined) < 2:
        return None
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(np.std(defined, ddof=1))
    # a difference of rates or AUCs lies in [-1, 1]
    return [max(point - half, -1.0), min(point + half, 1.0)]


def wilson_interval(successes: float, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion: it keeps its width at 0/n and n/n."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def score_difference_interval(p1: float, n1: int, p2: float, n2: int, confidence: float) -> list[float]:
    """Newcombe's hybrid score interval of p1 - p2 (Statistics in Medicine 1998,
    method 10), from each slice's Wilson interval."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    (low1, high1), (low2, high2) = wilson_interval(p1 * n1, n1, z), wilson_interval(p2 * n2, n2, z)
    difference = p1 - p2
    return [difference - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2),
            difference + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)]


# --- one slice --------------------------------------------------------------

def _finding_reason(positives: int, negatives: int, minimum: int) -> str | None:
    for count, kind in ((positives, "positives"), (negatives, "negatives")):
        if count == 0:
            return f"no {kind} in the slice"
        if count < minimum:
            return f"{count} {kind} < min_slice_positives {minimum}"
    return None


def _ill_reason(ill_images: int, minimum: int) -> str:
    return f"{ill_images} images with a finding < min_slice_positives {minimum}"


def evaluate_slice(
    labels: np.ndarray, probs: np.ndarray, cutoffs: np.ndarray, patients: Sequence, min_slice_positives: int,
    resamples: int, seed: int,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(figures, bootstrap draws) of one slice's images. The figures' keys:
    n, patients, ill_images, positives, mean_auc, mean_auc_ci, auc, auc_ci,
    sensitivity, specificity, underdiagnosis_rate, underdiagnosis_rate_ci, unreliable."""
    n = len(labels)
    positives = labels.sum(axis=0).astype(int) if n else np.zeros(NUM_FINDINGS, dtype=int)
    unreliable = {f: reason for i, f in enumerate(FINDINGS)
                  if (reason := _finding_reason(int(positives[i]), n - int(positives[i]), min_slice_positives))}
    reliable = [i for i, f in enumerate(FINDINGS) if f not in unreliable]
    missed, ill = missed_and_ill(labels, probs, cutoffs)
    ill_images = int(ill.sum())
    draws = slice_draws(labels, probs, reliable, missed, ill, patients, resamples, seed)

    # weighted_aucs with unit weights is the plain AUC, and 50x quicker than
    # sklearn's per-call input checks over 19 slices x 14 findings
    unit = np.ones((1, n), dtype=np.int32)
    auc = {f: float(weighted_aucs(labels[:, i], probs[:, i], unit)[0]) if i in reliable else None
           for i, f in enumerate(FINDINGS)}
    mean_auc = mean_of_defined(auc)
    if mean_auc is None:
        unreliable["mean_auc"] = "no finding has enough positives and negatives in the slice"
    rate = None
    if ill_images >= max(min_slice_positives, 1):
        rate = float(missed.sum() / ill_images)
    else:
        unreliable["underdiagnosis_rate"] = _ill_reason(ill_images, min_slice_positives)

    operating = operating_point_metrics(labels, probs, dict(zip(FINDINGS, cutoffs)))
    enough = max(min_slice_positives, 1)
    return {
        "n": n,
        "patients": int(pd.Series(list(patients), dtype=object).nunique()),
        "ill_images": ill_images,
        "positives": {f: int(positives[i]) for i, f in enumerate(FINDINGS)},
        "mean_auc": mean_auc,
        "mean_auc_ci": interval(draws["mean_auc"]) if mean_auc is not None else None,
        "auc": auc,
        "auc_ci": {f: interval(draws["auc"][:, i]) if auc[f] is not None else None for i, f in enumerate(FINDINGS)},
        "sensitivity": {f: operating["sensitivity"][f] if positives[i] >= enough else None
                        for i, f in enumerate(FINDINGS)},
        "specificity": {f: operating["specificity"][f] if n - positives[i] >= enough else None
                        for i, f in enumerate(FINDINGS)},
        "underdiagnosis_rate": rate,
        "underdiagnosis_rate_ci": interval(draws["underdiagnosis_rate"]) if rate is not None else None,
        "unreliable": unreliable,
    }, draws


# --- gaps -------------------------------------------------------------------

def _pair_confidence(slices: int, familywise: bool) -> float:
    pairs = slices * (slices - 1) // 2
    return 1 - (1 - CONFIDENCE) / pairs if familywise and pairs > 1 else CONFIDENCE


def attribute_gaps(attribute: str, figures: dict[str, dict], draws: dict[str, dict], familywise: bool = True) -> list:
    """The largest gap between the attribute's slices, per GAP_METRICS: keys
    attribute, metric, high, low (slice names), difference (high - low), ci,
    confidence, slices_compared, flagged (the interval excludes 0; for the
    underdiagnosis rate also score_ci, Newcombe's interval, which must exclude
    0 too), and reason where fewer than two slices have the metric (high, low,
    difference, ci None)."""
    gaps = []
    for metric in GAP_METRICS:
        values = {name: fig[metric] for name, fig in figures.items() if fig[metric] is not None}
        gap = {"attribute": attribute, "metric": metric, "high": None, "low": None, "difference": None,
               "ci": None, "confidence": None, "slices_compared": len(values), "flagged": False}
        if len(values) < 2:
            gaps.append({**gap, "reason": f"{len(values)} slice(s) with a {metric}: nothing to compare"})
            continue
        ordered = sorted(values, key=values.get)
        low, high = ordered[0], ordered[-1]
        confidence = _pair_confidence(len(values), familywise)
        # the two slices' resamples are independent draws, so row k of each pairs freely
        difference = values[high] - values[low]
        ci = difference_interval(difference, draws[high][metric] - draws[low][metric], confidence)
        flagged = ci is not None and (ci[0] > 0 or ci[1] < 0)
        extra = {}
        if metric == "underdiagnosis_rate":
            # A slice with few ill films, or a rate near 0 or 1, gives bootstrap
            # draws with almost no spread (every resample of 0 of 12 is 0); the
            # score interval keeps that slice's uncertainty. Flag a gap only when
            # both intervals exclude 0: the bootstrap also counts patients' several films.
            score = score_difference_interval(values[high], figures[high]["ill_images"], values[low],
                                              figures[low]["ill_images"], confidence)
            flagged = flagged and score[0] > 0
            extra["score_ci"] = score
        gaps.append({**gap, "high": high, "low": low, "difference": difference, "ci": ci, **extra,
                     "confidence": confidence, "flagged": flagged})
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


def _checked(y_true, y_prob, patient_ids, *per_image: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, probs = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    patients = np.asarray(list(patient_ids), dtype=object)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != NUM_FINDINGS:
        raise ValueError(f"y_true and y_prob must both be (images, {NUM_FINDINGS}), got {labels.shape} and "
                         f"{probs.shape}")
    if any(len(values) != len(labels) for values in (patients, *per_image)):
        raise ValueError("patient ids, ages, sexes and views need one value per test image")
    return labels, probs, patients


def subgroup_report(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: Mapping[str, float] | Sequence[float],
    patient_ids: Sequence, ages: Sequence, sexes: Sequence, views: Sequence,
    min_slice_positives: int = DEFAULT_MIN_SLICE_POSITIVES, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    familywise: bool = True,
) -> dict:
    """The subgroup evaluation of one model's test predictions, JSON-ready
    (floats to DIGITS decimals): {"sex": {"F": figures, "M": ...}, "age":
    {"0-20": ...}, "view": {"PA", "AP"}, "sex_age": {"F/0-20": ...}, "gaps":
    [gap, ...], "age_unknown": {"images", "note"}, "settings": {...}} with
    figures as evaluate_slice's, gaps as attribute_gaps' and age_unknown as
    age_unknown's. thresholds: {finding: value} (as evaluate's) or 14 values."""
    labels, probs, patients = _checked(y_true, y_prob, patient_ids, ages, sexes, views)
    cutoffs = threshold_array(thresholds)
    report: dict = {}
    gaps = []
    for attribute, masks in slice_masks(ages, sexes, views).items():
        figures, draws = {}, {}
        for name, mask in masks.items():
            figures[name], draws[name] = evaluate_slice(
                labels[mask], probs[mask], cutoffs, patients[mask], min_slice_positives, resamples,
                _seed_for(seed, attribute, name))
        report[attribute] = figures
        gaps.extend(attribute_gaps(attribute, figures, draws, familywise))
    report["gaps"] = gaps
    report["age_unknown"] = age_unknown(ages)
    report["settings"] = {"min_slice_positives": min_slice_positives, "resamples": resamples, "seed": seed,
                          "familywise_gaps": familywise, "images": len(labels),
                          "patients": int(pd.Series(patients).nunique())}
    return rounded(report)


def slice_metric_key(attribute: str, name: str) -> str:
    """The slice as part of an MLflow metric name: MLflow allows letters,
    digits and _-. / (and ':' except on Windows), so "80+" becomes "80plus"."""
    return metric_name(f"{attribute}_{name.replace('+', 'plus')}")


def subgroup_mlflow_metrics(report: dict) -> dict[str, float]:
    """Flat MLflow metrics of a subgroup_report: per slice test_auc_<attribute>_<slice>
    (mean AUC) with _ci_low/_ci_high, underdiagnosis_<attribute>_<slice> with
    _ci_low/_ci_high; per gap subgroup_gap_<metric>_<attribute> (and _flagged, 0/1).
    E.g. test_auc_sex_F, underdiagnosis_age_0-20, test_auc_sex_age_F/0-20,
    underdiagnosis_age_80plus; test_images_age_unknown, the images in no age
    slice. None values are left out."""
    scalar: dict[str, float | None] = {}
    for attribute in ATTRIBUTES:
        for name, figures in report[attribute].items():
            key = slice_metric_key(attribute, name)
            for prefix, metric in (("test_auc", "mean_auc"), ("underdiagnosis", "underdiagnosis_rate")):
                low, high = figures[f"{metric}_ci"] or (None, None)
                scalar.update({f"{prefix}_{key}": figures[metric], f"{prefix}_{key}_ci_low": low,
                               f"{prefix}_{key}_ci_high": high})
    if "age_unknown" in report:  # reports written before the count have none
        scalar["test_images_age_unknown"] = report["age_unknown"]["images"]
    for gap in report["gaps"]:
        if gap["difference"] is not None:
            scalar[f"subgroup_gap_{gap['metric']}_{gap['attribute']}"] = gap["difference"]
            scalar[f"subgroup_gap_{gap['metric']}_{gap['attribute']}_flagged"] = float(gap["flagged"])
    return {k: float(v) for k, v in scalar.items() if v is not None}


# --- promotion check --------------------------------------------------------

def underdiagnosis_regression(
    y_true: np.ndarray, champion_prob: np.ndarray, champion_thresholds, challenger_prob: np.ndarray,
    challenger_thresholds, patient_ids: Sequence, ages: Sequence, sexes: Sequence,
    min_slice_positives: int = DEFAULT_MIN_SLICE_POSITIVES, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    familywise: bool = True,
) -> dict:
    """Whether the challenger underdiagnoses any sex or age slice significantly
    more than the champion, on the same test images, each at its own thresholds.
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
    labels, champion, patients = _checked(y_true, champion_prob, patient_ids, ages, sexes)
    challenger = np.asarray(challenger_prob, dtype=float)
    if challenger.shape != champion.shape:
        raise ValueError("the champion's and the challenger's predictions must cover the same images")
    missed_champion, ill = missed_and_ill(labels, champion, threshold_array(champion_thresholds))
    missed_challenger, _ = missed_and_ill(labels, challenger, threshold_array(challenger_thresholds))
    masks = slice_masks(ages, sexes, [""] * len(labels))
    checked = sum(len(masks[a]) for a in PROMOTION_ATTRIBUTES)
    confidence = 1 - (1 - CONFIDENCE) / checked if familywise else CONFIDENCE
    result: dict = {"worse_slices": [], "confidence": confidence, "age_unknown": age_unknown(ages)}
    for attribute in PROMOTION_ATTRIBUTES:
        result[attribute] = {}
        for name, mask in masks[attribute].items():
            entry = _paired_rate_difference(
                missed_champion[mask], missed_challenger[mask], ill[mask], patients[mask],
                min_slice_positives, resamples, _seed_for(seed, "promotion", attribute, name), confidence)
            result[attribute][name] = entry
            if entry["worse"]:
                result["worse_slices"].append(f"{attribute}/{name}")
    return rounded(result)


def _paired_rate_difference(
    missed_champion: np.ndarray, missed_challenger: np.ndarray, ill: np.ndarray, patients: np.ndarray,
    min_slice_positives: int, resamples: int, seed: int, confidence: float,
) -> dict:
    ill_images = int(ill.sum())
    entry = {"n": len(ill), "ill_images": ill_images, "champion_rate": None, "challenger_rate": None,
             "difference": None, "ci": None, "worse": False}
    if ill_images < max(min_slice_positives, 1):
        return {**entry, "reason": _ill_reason(ill_images, min_slice_positives)}
    champion_rate = float(missed_champion.sum() / ill_images)
    challenger_rate = float(missed_challenger.sum() / ill_images)
    differences = [weighted_share(counts, missed_challenger, ill) - weighted_share(counts, missed_champion, ill)
                   for counts in patient_resample_counts(patients, resamples, seed)] if resamples > 0 else []
    difference = challenger_rate - champion_rate
    ci = difference_interval(difference, np.concatenate(differences), confidence) if differences else None
    return {**entry, "champion_rate": champion_rate, "challenger_rate": challenger_rate, "difference": difference,
            "ci": ci, "worse": ci is not None and ci[0] > 0}
