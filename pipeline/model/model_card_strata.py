"""The model card's "Strata" section (an HTML fragment): the test figures split
by the evaluate.strata columns (pipeline.model.strata.strata_report). Flagged
comparisons first, in words with their interval and adjusted p, then each
column's table (the subgroup tables' layout) and its per-finding detail."""
from __future__ import annotations

from collections.abc import Mapping

from pipeline.core.html import escape
from pipeline.model.model_card_sections import slice_table
from pipeline.model.strata import flag_sentence


def strata_section(report: Mapping | None) -> str:
    """"" without a report (no evaluate.strata)."""
    if not report:
        return ""
    intro = (
        '<p class="note">The test films split by columns of the data that nobody trained on (evaluate.strata). '
        "For each finding, each stratum's sensitivity at the operating threshold and its AUC are compared with "
        "the column's other films, with 95% bootstrap intervals over patients. A comparison is flagged when "
        "its p, adjusted over all of its column's comparisons together (a permutation maxT: the column's values "
        f"dealt anew among patients with as many films), is at most {report['flag_level']:.3g} (5% shared over "
        f"{report['columns_tested']} column(s)): a model that does equally well in every stratum is flagged in "
        "about 5% of reports (6.1% of 1,000 in simulation). A flag says the model does "
        "differently there; it does not say why (a drain, a site, a scanner and the patients who get them "
        "differ in more than one way).</p>")
    flagged = report.get("flagged") or []
    items = "".join(f'<li class="flagged">{escape(flag_sentence(g))}.</li>' for g in flagged)
    verdict = (f'<ul class="gaps">{items}</ul>' if flagged else
               f"<p>No comparison is flagged ({report['comparisons']} made).</p>")
    tables = []
    for column, entry in report["columns"].items():
        note = f'<p class="note">{escape(entry["no_value"])} test films have no {escape(column)} value.</p>' \
            if entry.get("no_value") else ""
        if entry.get("reason"):
            note += f'<p class="note">{escape(column)}: {escape(entry["reason"])}.</p>'
        tables.append(slice_table(column, entry["strata"], note) if entry["strata"] else
                      f"<h3>By {escape(column)}</h3>{note}")
    return f'<section id="strata"><h2>Strata (test)</h2>{intro}{verdict}{"".join(tables)}</section>'
