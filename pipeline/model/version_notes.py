"""What a registered version says to a person choosing a model: its tags
(rounded, few) and the markdown description shown on its page in
the MLflow UI (test mean AUC with its CI, the test set, a per-finding table,
the comparison with the champion of that moment and the decision).

Full-precision figures stay machine-readable in the version's MLmodel metadata
(`mean_auc`, `auc`, `thresholds`, ...) and in the run's metrics; the tags and
the description are for reading.
"""
from __future__ import annotations

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import share_films

UNDEFINED = "undefined"
TOO_FEW = "too few films"  # a sensitivity or specificity below the floor of films (evaluate.min_slice_positives)


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
    """Rounded, one-value tags: mean_auc, mean_auc_ci, test_manifest,
    test_images, test_patients, data_source. Per-finding figures are in the
    description's table (few tags: the UI shows them in a five-row box)."""
    tags = {"mean_auc": score(metadata.get("mean_auc")),
            "test_manifest": f"{metadata.get('test_manifest')}"}
    if metadata.get("mean_auc_ci") is not None:
        tags["mean_auc_ci"] = f"[{interval(metadata['mean_auc_ci']).replace(' to ', ', ')}]"
    for key in ("test_images", "test_patients"):
        if metadata.get(key) is not None:
            tags[key] = str(int(metadata[key]))
    if metadata.get("data_source") is not None:
        tags["data_source"] = str(metadata["data_source"])
    return tags


def reasons_text(reasons) -> str:
    """The decision's reasons as sentences ("a; b"), for a tag a person reads."""
    return "; ".join(str(reason) for reason in reasons or [])


def _decision_lines(decision: dict) -> list[str]:
    champion = decision.get("champion_version")
    if decision["promote"]:
        outcome = "**champion**: this version took the `champion` alias"
    elif champion is not None:
        outcome = f"**challenger**: not promoted; the champion stayed version {champion}"
    else:
        outcome = "**challenger**: not promoted"
    lines = [f"**Decision at registration:** {outcome}. Rule: {decision['rule']}.", ""]
    reasons = list(decision.get("reasons") or [])
    if reasons:
        lines += ["Because:", "", *[f"- {reason}." if not str(reason).endswith(".") else f"- {reason}"
                                    for reason in reasons], ""]
    return lines


# The status block at the top of a description: replaced, never stacked, when the alias moves again.
STATUS_MARK = "> **Now:"


def with_status(description: str | None, headline: str, detail: str) -> str:
    """`description` under a status block ("> **Now: former champion.** ...")
    that replaces the one it had."""
    lines = (description or "").splitlines()
    if lines and lines[0].startswith(STATUS_MARK):
        lines.pop(0)
        while lines and not lines[0].strip():
            lines.pop(0)
    return "\n".join([f"{STATUS_MARK} {headline}.** {detail}", "", *lines])


def changes_from_champion(champion_version: int, champion: dict, ours: dict) -> list[str]:
    """Why this version exists next to the champion it was compared with: what
    differs in its params, data and code. `champion` and `ours`: {"params":
    flattened params or None, "data_hash", "git_commit", "backbone"}."""
    lines = [f"## What changed from champion version {champion_version}", ""]
    changed = []
    theirs_params, our_params = champion.get("params"), ours.get("params")
    if theirs_params is None or our_params is None:
        lines.append(f"- params: not comparable (version {champion_version} has no `params.json`)")
    else:
        for key in sorted(set(theirs_params) | set(our_params)):
            old, new = theirs_params.get(key, "(absent)"), our_params.get(key, "(absent)")
            if old != new:
                changed.append(f"- param `{key}`: {old} → {new}")
    for key, label in (("data_hash", "data (hash of the TFRecord shards)"), ("git_commit", "code (git commit)")):
        old, new = champion.get(key), ours.get(key)
        if old != new:
            changed.append(f"- {label}: `{old}` → `{new}`")
    if changed:
        return [*lines, *changed, ""]
    code = "code" if not str(ours.get("git_commit", "")).endswith("-dirty") else \
        "git commit (both with uncommitted changes, which the commit cannot tell apart)"
    return [*lines, f"Nothing: the same params, data and {code} as version {champion_version}. This version is "
            "a re-run (a forced `dvc repro`, or the same commit evaluated again), registered so that its comparison "
            "with the champion is on record.", ""]


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
    ]
    compared = [f for f in FINDINGS if diffs.get(f) is not None]
    rows = [["**Mean**", score(comparison.get("champion_mean_auc")), score(_this_mean(champion_auc, diffs)),
             difference(comparison.get("mean_auc_diff")), interval(comparison.get("mean_auc_diff_ci"), difference)]]
    rows += [[finding, score(champion_auc.get(finding)), score(auc.get(finding)), difference(diffs.get(finding)),
              interval(cis.get(finding), difference)] for finding in compared]
    lines += markdown_table(["Finding", "Champion AUC", "This AUC", "Difference", "95% CI"], rows)
    left_out = [f for f in FINDINGS if f not in compared]
    if left_out:
        lines += ["", f"Not compared (too few positive or negative films among those compared): "
                      f"{', '.join(left_out)}."]
    return [*lines, "", *_operating_lines(comparison), *_subgroup_lines(decision.get("subgroups"))]


def _subgroup_lines(check: dict | None) -> list[str]:
    """The subgroup check's outcome (evaluate.promotion.subgroups), when it ran."""
    if check is None:
        return ["Subgroups: not checked for this decision (evaluate.promotion.subgroups is off); the model "
                "card's subgroup section has each model's own slices.", ""]
    worse = check.get("worse_slices") or []
    if not worse:
        return ["Subgroups: in no sex or age slice does this version's underdiagnosis rate rise significantly "
                "over the champion's.", ""]
    return [f"Subgroups: underdiagnosis rises significantly in {', '.join(worse)} (the reasons above give the "
            "figures).", ""]


def _operating_lines(comparison: dict) -> list[str]:
    """Each model's sensitivity and specificity at its own thresholds, and its
    mean ECE, on the compared films (evaluate.operating_comparison)."""
    lines = []
    ece = comparison.get("mean_ece") or {}
    if ece:
        lines += [f"Mean calibration error (ECE) on these films: champion {score(ece.get('champion'))}, "
                  f"this version {score(ece.get('challenger'))} (lower is better).", ""]
    points = comparison.get("operating_points") or {}
    if {"champion", "challenger"} <= set(points):
        theirs, ours = points["champion"], points["challenger"]
        rows = [[f, *(TOO_FEW if value is None else _share(value) for value in (
                    theirs["sensitivity"].get(f), ours["sensitivity"].get(f),
                    theirs["specificity"].get(f), ours["specificity"].get(f)))] for f in FINDINGS]
        lines += ["Sensitivity and specificity on these films, each model at its own thresholds (none on fewer "
                  "positive or negative films than the AUC floor):", "",
                  *markdown_table(["Finding", "Champion sensitivity", "This sensitivity", "Champion specificity",
                                   "This specificity"], rows), ""]
    return lines


def _this_mean(champion_auc: dict, diffs: dict) -> float | None:
    """This version's mean AUC over the findings defined for both (what mean_auc_diff compares)."""
    pairs = [(champion_auc[f], diffs[f]) for f in FINDINGS
             if champion_auc.get(f) is not None and diffs.get(f) is not None]
    return sum(c + d for c, d in pairs) / len(pairs) if pairs else None


# MLflow's UI draws markdown tables without cell padding (0.8210.448): every cell but the last ends with this.
CELL_GAP = "&emsp;"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table whose cells stay apart on the page (CELL_GAP)."""
    def line(cells):
        return "| " + " | ".join([*(f"{cell}{CELL_GAP}" for cell in cells[:-1]), str(cells[-1])]) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]



def _share(value: float | None) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def finding_rows(metadata: dict) -> list[list[str]]:
    """Per finding: test positives, AUC (or why none), its CI, threshold, sensitivity, specificity."""
    auc, reasons = metadata.get("auc") or {}, metadata.get("auc_missing_reason") or {}
    cis, thresholds = metadata.get("auc_ci") or {}, metadata.get("thresholds") or {}
    positives = metadata.get("test_positives") or {}
    sensitivity, specificity = metadata.get("sensitivity") or {}, metadata.get("specificity") or {}
    floor, images = metadata.get("min_positives") or 0, metadata.get("test_images")
    rows = []
    for f in FINDINGS:
        figure = score(auc[f]) if auc.get(f) is not None else (reasons.get(f) or UNDEFINED)
        ci = interval(cis.get(f)) if auc.get(f) is not None else "–"
        count = positives.get(f)
        rows.append([f, "–" if count is None else str(count), figure, ci, score(thresholds.get(f)),
                     _floored_share("sensitivity", sensitivity.get(f), count, images, floor),
                     _floored_share("specificity", specificity.get(f), count, images, floor)])
    return rows


def _floored_share(key: str, value: float | None, positives: int | None, images: int | None, floor: int) -> str:
    """`value` at 2 decimals, or TOO_FEW when it is a share of fewer films than the floor."""
    films = None if positives is None else share_films(key, positives, images)
    return TOO_FEW if films is not None and films < floor else _share(value)



def version_description(metadata: dict, decision: dict, params: dict | None = None,
                        changes: list[str] | None = None, card_link: str | None = None) -> str:
    """The markdown description of a registered version: its figures, data,
    decision, what changed from the champion (`changes`, changes_from_champion's
    lines), the paired comparison and the per-finding table."""
    from pipeline.data.sources import source_sentence

    images, patients = metadata.get("test_images"), metadata.get("test_patients")
    manifest = metadata.get("test_manifest")
    mean = f"**Test mean AUC {score(metadata.get('mean_auc'))}**"
    if metadata.get("mean_auc_findings") is not None:
        count = metadata["mean_auc_findings"]
        mean += f" over {count} finding{'s' if count != 1 else ''}"
    if metadata.get("mean_auc_ci") is not None:
        method = f"{metadata['ci_method']}:" if metadata.get("ci_method") else "95% CI"
        mean += f" ({method} {interval(metadata['mean_auc_ci'])})"
    test_set = f"test set `{manifest}`" + (f", {images} images" if images is not None else "")
    test_set += f" of {patients} patients" if patients is not None else ""
    lines = [f"{mean} on the {test_set}.", ""]
    if "data_source" in metadata:
        lines += [f"**{source_sentence(metadata['data_source'])}**", ""]
    if card_link:
        lines += [f"Model card (figures, ROC and reliability plots, subgroups): [model_card.html]({card_link})", ""]
    lines += _decision_lines(decision)
    lines += changes or []
    lines += _comparison_lines(decision, metadata.get("auc") or {})
    method = metadata.get("threshold_method")
    lines += ["## Per finding (test set)", "",
              "Thresholds chosen on the validation split" + (f" by {method}" if method else "")
              + "; sensitivity and specificity at them on test. No AUC below the floor of test positives.", ""]
    lines += markdown_table(["Finding", "Test positives", "AUC", "95% CI", "Threshold", "Sensitivity",
                             "Specificity"], finding_rows(metadata))
    lines.append("")
    preprocessing = metadata.get("preprocessing") or {}
    if preprocessing.get("image_size") is not None:
        lines += [f"Input: {preprocessing['image_size']} px images, fit `{preprocessing.get('fit')}`.", ""]
    if params:
        lines += ["Training params: `params.json` in the run's artifacts.", ""]
    lines.append("Full-precision figures: the run's metrics (`test_mean_auc`, `test_auc_<finding>`) "
                 "and this version's MLmodel metadata.")
    return "\n".join(lines)
