"""What a registered version says to a person choosing a model: its tags
(rounded, one per finding) and the markdown description shown on its page in
the MLflow UI (test mean AUC with its CI, the test set, a per-finding table,
the comparison with the champion of that moment and the decision).

Full-precision figures stay machine-readable in the version's MLmodel metadata
(`mean_auc`, `auc`, `thresholds`, ...) and in the run's metrics; the tags and
the description are for reading.
"""
from __future__ import annotations

from pipeline.core.labels import FINDINGS

UNDEFINED = "undefined"


def score(value: float | None) -> str:
    """An AUC or threshold at 3 decimals ("0.768"), or "undefined"."""
    return UNDEFINED if value is None else f"{float(value):.3f}"


def difference(value: float | None) -> str:
    """A signed difference at 4 decimals ("+0.0123"), or "undefined"."""
    return UNDEFINED if value is None else f"{float(value):+.4f}"


def interval(bounds, formatter=score) -> str:
    """[low, high] as "0.751 to 0.785" ("undefined" if either end is)."""
    if not bounds or len(bounds) != 2 or bounds[0] is None or bounds[1] is None:
        return UNDEFINED
    low, high = bounds
    return f"{formatter(low)} to {formatter(high)}"


def score_tags(metadata: dict) -> dict[str, str]:
    """Rounded, one-value tags: mean_auc, mean_auc_ci, auc_<finding>,
    threshold_<finding>, test_manifest, test_images."""
    auc = metadata.get("auc") or {}
    thresholds = metadata.get("thresholds") or {}
    tags = {"mean_auc": score(metadata.get("mean_auc")),
            "test_manifest": f"{metadata.get('test_manifest')}"}
    if metadata.get("mean_auc_ci") is not None:
        tags["mean_auc_ci"] = f"[{interval(metadata['mean_auc_ci']).replace(' to ', ', ')}]"
    if metadata.get("test_images") is not None:
        tags["test_images"] = str(int(metadata["test_images"]))
    reasons = metadata.get("auc_missing_reason") or {}
    tags.update({f"auc_{f}": reasons.get(f) or score(auc.get(f)) if auc.get(f) is None else score(auc[f])
                 for f in FINDINGS if f in auc})
    tags.update({f"threshold_{f}": score(thresholds.get(f)) for f in FINDINGS if f in thresholds})
    return tags


def version_scores(tags: dict[str, str]) -> dict:
    """{"mean_auc": float | None, "auc": {finding: float | None}} from a
    version's tags, whether registered with the per-finding tags (auc_<finding>)
    or before them (one JSON tag `auc`, `mean_auc` at full precision)."""
    import json

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):  # "undefined", "too few positives (n=1)", ...
            return None

    if any(f"auc_{f}" in tags for f in FINDINGS):
        auc = {f: number(tags[f"auc_{f}"]) for f in FINDINGS if f"auc_{f}" in tags}
    else:
        auc = {f: (None if v is None else float(v)) for f, v in json.loads(tags.get("auc") or "{}").items()}
    return {"mean_auc": number(tags.get("mean_auc")), "auc": auc}


def _decision_lines(decision: dict) -> list[str]:
    outcome = "**champion** (given the `champion` alias)" if decision["promote"] else "challenger (not promoted)"
    lines = [f"**Decision:** {outcome}", "", f"Rule: {decision['rule']}", ""]
    reasons = list(decision.get("reasons") or [])
    if reasons:
        lines += ["Reasons:", "", *[f"- {reason}" for reason in reasons], ""]
    return lines


def _comparison_lines(decision: dict, auc: dict) -> list[str]:
    comparison = decision.get("comparison")
    champion = decision.get("champion_version")
    if not comparison:
        if champion is not None:
            return [f"No paired comparison with champion version {champion} (the reasons above say why).", ""]
        return []
    size = f"{comparison.get('test_images')} test images"
    if comparison.get("test_patients") is not None:
        size += f", {comparison['test_patients']} patients"
    champion_auc = comparison.get("champion_auc") or {}
    diffs = comparison.get("auc_diff") or {}
    cis = comparison.get("auc_diff_ci") or {}
    lines = [
        f"## Compared with champion version {champion}",
        "",
        f"Both scored on the same {size} (patients neither model trained on); differences are this version "
        "minus the champion, 95% CIs from a patient-level bootstrap.",
        "",
        "| Finding | Champion AUC | This AUC | Difference | 95% CI |",
        "|---|---:|---:|---:|---|",
        f"| **Mean** | {score(comparison.get('champion_mean_auc'))} | {score(_this_mean(champion_auc, diffs))} "
        f"| {difference(comparison.get('mean_auc_diff'))} "
        f"| {interval(comparison.get('mean_auc_diff_ci'), difference)} |",
    ]
    for finding in FINDINGS:
        lines.append(f"| {finding} | {score(champion_auc.get(finding))} | {score(auc.get(finding))} "
                     f"| {difference(diffs.get(finding))} | {interval(cis.get(finding), difference)} |")
    return [*lines, ""]


def _this_mean(champion_auc: dict, diffs: dict) -> float | None:
    """This version's mean AUC over the findings defined for both (what mean_auc_diff compares)."""
    pairs = [(champion_auc[f], diffs[f]) for f in FINDINGS
             if champion_auc.get(f) is not None and diffs.get(f) is not None]
    return sum(c + d for c, d in pairs) / len(pairs) if pairs else None


def version_description(metadata: dict, decision: dict, params: dict | None = None) -> str:
    """The markdown description of a registered version."""
    auc = metadata.get("auc") or {}
    thresholds = metadata.get("thresholds") or {}
    images = metadata.get("test_images")
    manifest = metadata.get("test_manifest")
    mean = f"**Test mean AUC {score(metadata.get('mean_auc'))}**"
    if metadata.get("mean_auc_findings") is not None:
        mean += f" over {metadata['mean_auc_findings']} findings"
    if metadata.get("mean_auc_ci") is not None:
        method = f"{metadata['ci_method']}:" if metadata.get("ci_method") else "95% CI"
        mean += f" ({method} {interval(metadata['mean_auc_ci'])})"
    test_set = f"test set `{manifest}`" + (f", {images} images" if images is not None else "")
    lines = [f"{mean} on the {test_set}.", "", *_decision_lines(decision)]
    lines += _comparison_lines(decision, auc)
    lines += ["## Per finding (test set)", "", "| Finding | AUC | Threshold |", "|---|---:|---:|"]
    reasons = metadata.get("auc_missing_reason") or {}
    lines += [f"| {f} | {reasons.get(f) if auc.get(f) is None and reasons.get(f) else score(auc.get(f))} "
              f"| {score(thresholds.get(f))} |" for f in FINDINGS]
    lines.append("")
    preprocessing = metadata.get("preprocessing") or {}
    if preprocessing.get("image_size") is not None:
        lines += [f"Input: {preprocessing['image_size']} px images, fit `{preprocessing.get('fit')}`.", ""]
    if params:
        lines += ["Training params: `params.json` in the run's artifacts.", ""]
    lines.append("Full-precision figures: the run's metrics (`test_mean_auc`, `test_auc_<finding>`) "
                 "and this version's MLmodel metadata.")
    return "\n".join(lines)
