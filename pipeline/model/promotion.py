"""The promotion rule: when a challenger takes the champion alias.

This module owns the rule's thresholds (params.yaml evaluate.promotion), the
sentences that name how a decision was reached (recorded as the version's
`champion_rule` tag and in metrics/evaluate.json) and the tags a decision is
written as. What the rule reads is the paired comparison of the two models on
the same test images (pipeline.model.selection) and, with
evaluate.promotion.subgroups or .strata, the underdiagnosis check by slice
or stratum (pipeline.model.subgroups); pipeline.model.champion gathers both.

A different rule is one function with RULE's signature, set as RULE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.core.labels import FINDINGS
from pipeline.core.settings import PromotionSettings
from pipeline.model.subgroups import STRATUM_PREFIX
from pipeline.model.version_notes import difference, reasons_text

# How a decision was reached, as recorded on the version and in the metrics.
RULE_FIRST = "first version: no champion to compare with"
RULE_NO_CHAMPION_SCORES = "champion could not be scored: no promotion"
RULE_LEAKAGE = "refused: too few test patients that the champion did not train on"
RULE_PROMOTED = "non-inferior: mean AUC difference CI lower bound above -margin, no finding significantly worse"
RULE_MEAN = "refused: mean AUC difference CI lower bound at or below -margin"
RULE_FINDING = "refused: a finding's AUC difference CI lies below -max_class_drop"
RULE_SUBGROUP = ("refused: underdiagnosis rises significantly in a sex or age slice or a stratum "
                 "(evaluate.promotion.subgroups, evaluate.promotion.strata)")

# The tags a decision is written as, on the registered version and its run.
CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION_TAG = "champion_decision"  # what holds now: champion, challenger or former champion (pipeline.model.registry)
DECIDED_TAG = "decided_at_registration"  # what was decided when the version was registered
RULE_TAG = "champion_rule"
REASONS_TAG = "champion_reasons"
COMPARED_TAG = "compared_with_champion_version"


@dataclass(frozen=True)
class Outcome:
    promote: bool
    rule: str  # one of the RULE_* sentences (or a variant's own)
    reasons: list[str]


def non_inferiority(comparison: dict, subgroups: dict | None, settings: PromotionSettings) -> Outcome:
    """Promote when the challenger is non-inferior on the mean AUC (its paired
    difference's CI lower bound is above -margin), no finding is significantly
    worse by more than max_class_drop (that finding's CI upper bound below
    -max_class_drop) and, when checked, no sex or age slice's underdiagnosis
    rate rises significantly. Every failing condition is named."""
    margin, max_drop = settings.margin, settings.max_class_drop
    low, high = comparison["mean_auc_diff_ci"]
    mean_text = (f"mean AUC difference {difference(comparison['mean_auc_diff'])} with 95% CI "
                 f"[{difference(low)}, {difference(high)}]")
    mean_fails = low is None or low <= -margin
    reasons = [f"{mean_text}: the lower bound is not above -{margin} (margin)"] if mean_fails else []
    for finding in FINDINGS:
        ci_low, ci_high = comparison["auc_diff_ci"][finding]
        if ci_high is not None and ci_high < -max_drop:
            reasons.append(f"{finding} AUC difference {difference(comparison['auc_diff'][finding])} with 95% CI "
                           f"[{difference(ci_low)}, {difference(ci_high)}] lies below -{max_drop} (max_class_drop)")
    if reasons:
        outcome = Outcome(False, RULE_MEAN if mean_fails else RULE_FINDING, reasons)
    else:
        outcome = Outcome(True, RULE_PROMOTED, [f"{mean_text} is above -{margin}, and no finding's CI lies below "
                                                f"-{max_drop}"])
    refusals = subgroup_refusals(subgroups) if subgroups else []
    if refusals:
        return Outcome(False, outcome.rule if not outcome.promote else RULE_SUBGROUP, [*outcome.reasons, *refusals])
    return outcome


def subgroup_refusals(regression: dict) -> list[str]:
    """One reason per sex or age slice whose underdiagnosis rate the challenger
    raises significantly (pipeline.model.subgroups.underdiagnosis_regression)."""
    reasons = []
    for name in regression["worse_slices"]:
        attribute, group = name.split("/", 1)
        figures = regression[attribute][group]
        low, high = figures["ci"]
        where = (f"{attribute.removeprefix(STRATUM_PREFIX)}={group}" if attribute.startswith(STRATUM_PREFIX)
                 else f"{attribute} {group}")
        reasons.append(f"underdiagnosis in {where} {difference(figures['difference'])} "
                       f"({figures['champion_rate']:.3f} -> {figures['challenger_rate']:.3f}), CI "
                       f"[{difference(low)}, {difference(high)}] above 0")
    return reasons


# The rule in force: (paired comparison, subgroup check or None, evaluate.promotion) -> Outcome.
RULE: Callable[[dict, dict | None, PromotionSettings], Outcome] = non_inferiority


def apply_rule(comparison: dict, subgroups: dict | None, settings: PromotionSettings) -> Outcome:
    return RULE(comparison, subgroups, settings)


def decision_tags(decision: dict) -> dict[str, str]:
    """The champion decision as version and run tags a person can read."""
    outcome = CHAMPION if decision["promote"] else CHALLENGER
    tags = {DECISION_TAG: outcome, DECIDED_TAG: outcome, RULE_TAG: decision["rule"],
            REASONS_TAG: reasons_text(decision["reasons"])}
    # "none": decided with no champion to compare with (a first version)
    champion = decision.get("champion_version")
    tags[COMPARED_TAG] = "none" if champion is None else str(champion)
    comparison = decision.get("comparison")
    if comparison:
        low, high = comparison["mean_auc_diff_ci"]
        tags["champion_mean_auc_diff"] = difference(comparison["mean_auc_diff"])
        tags["champion_mean_auc_diff_ci"] = f"[{difference(low)}, {difference(high)}]"
        tags["champion_compared_on_images"] = str(comparison["test_images"])
    return tags
