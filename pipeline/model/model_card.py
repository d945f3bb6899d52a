"""The evaluate stage's model card: one self-contained HTML file.

ROC curves are hand-written inline SVG polylines and the reliability diagram is
calibration.reliability_svg inlined (the calibration and subgroup sections are
in model_card_sections). There is no script, external style, font or link, so
model_card.html works copied alone, offline, or as an MLflow artifact. No
timestamps: the same inputs give the same bytes.
"""
from __future__ import annotations

from pipeline.core.html import escape, html_page
from pipeline.core.labels import FINDINGS
from pipeline.model.model_card_sections import SECTIONS_STYLE, calibration_section, subgroups_section

CARD_FILE = "model_card.html"
PLOT_SIZE = 180  # px, each finding's ROC square
STYLE = """
body { max-width: 90em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { font-size: .88em; }
th, td { text-align: right; }
th:first-child, td:first-child { text-align: left; }
.worse { background: #fdecea; } .decision { font-weight: bold; }
.curves { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: .85em; text-align: center; }
svg { background: #fafafa; border: 1px solid #ddd; }
"""


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def roc_svg(points: list[dict], size: int = PLOT_SIZE) -> str:
    """An ROC curve as an inline SVG: the chance diagonal and the curve."""
    coords = " ".join(f"{p['fpr'] * size:.1f},{(1 - p['tpr']) * size:.1f}" for p in points)
    return (f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
            f'role="img"><line x1="0" y1="{size}" x2="{size}" y2="0" stroke="#bbb" stroke-dasharray="4"/>'
            f'<polyline points="{coords}" fill="none" stroke="#1565c0" stroke-width="2"/></svg>')


def data_section(summary: dict, metrics: dict) -> str:
    splits = ", ".join(f"{escape(k)} {escape(v)}" for k, v in summary["split_sizes"].items())
    rows = "".join(f"<tr><td>{escape(f)}</td><td>{metrics['test_positives'][f]}</td></tr>" for f in FINDINGS)
    return (f"<h2>Data</h2><p>Images per split: {splits}. Data hash <code>{escape(summary['data_hash'])}</code>, "
            f"test manifest <code>{escape(summary['test_manifest'])}</code>.</p>"
            f"<table><thead><tr><th>finding</th><th>test positives</th></tr></thead><tbody>{rows}</tbody></table>")


PER_FINDING_COLUMNS = ("AUC", "95% CI", "AUPRC", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1")


def auc_cell(metrics: dict, finding: str) -> str:
    """The AUC, or why it is not a figure ("too few positives (n=1)")."""
    reason = (metrics.get("auc_missing_reason") or {}).get(finding)
    return escape(reason) if reason and metrics["auc"][finding] is None else _num(metrics["auc"][finding])


def findings_section(metrics: dict) -> str:
    rows = []
    for f in FINDINGS:
        low, high = metrics["auc_ci_low"][f], metrics["auc_ci_high"][f]
        ci = "–" if low is None else f"{_num(low)}–{_num(high)}"
        cells = [auc_cell(metrics, f), ci, _num(metrics["auprc"][f]), _num(metrics["thresholds"][f]),
                 *(_num(metrics[k][f]) for k in ("sensitivity", "specificity", "ppv", "npv", "f1"))]
        rows.append(f"<tr><td>{escape(f)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    low, high = metrics["mean_auc_ci"]
    head = "".join(f"<th>{c}</th>" for c in ("finding", *PER_FINDING_COLUMNS))
    method = metrics.get("ci_method") or f"95% CI, {metrics['bootstrap_resamples']} bootstrap resamples"
    interval = (f"{escape(method)}: {_num(low)}–{_num(high)}" if low is not None
                else f"no interval: {escape(metrics.get('ci_missing_reason', 'too little data'))}")
    findings = metrics.get("mean_auc_findings")
    over = f" over the {findings} findings with at least {metrics.get('min_positives')} positive and negative " \
           "test films" if findings is not None else ""
    return (f"<h2>Per finding (test)</h2><p>Mean AUC {_num(metrics['mean_auc'])}{over} ({interval}); "
            f"{metrics.get('test_images')} test films of {metrics.get('test_patients')} patients; thresholds chosen "
            f"on val by {escape(metrics['threshold_method'])}; exact-match accuracy "
            f"{_num(metrics['exact_match_accuracy'])}.</p>"
            f'<table id="per-finding"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def curves_section(roc: dict[str, list[dict]]) -> str:
    figures = "".join(f"<figure>{roc_svg(roc[f])}<figcaption>{escape(f)}</figcaption></figure>"
                      for f in FINDINGS if f in roc)
    return f'<h2>ROC curves (test)</h2><div class="curves">{figures}</div>'


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _interval(bounds) -> str:
    low, high = bounds if bounds else (None, None)
    return "–" if low is None else f"[{low:+.3f}, {high:+.3f}]"


def champion_section(metrics: dict, registry: dict) -> str:
    """The decision in words, and with a champion to compare with, the two
    models side by side per finding on the same test images, with the paired
    difference and its 95% CI (rows whose CI lies wholly below 0 marked)."""
    verdict = "takes the champion alias" if registry["champion"] else "stays challenger"
    reasons = "".join(f"<li>{escape(r)}</li>" for r in registry["reasons"])
    text = (f'<h2>Champion comparison</h2><p class="decision">Version {registry["version"]} {verdict} '
            f"({escape(registry['rule'])}).</p><ul>{reasons}</ul>")
    comparison = registry.get("comparison")
    if not comparison:
        return text
    rows = []
    for f in FINDINGS:
        high = comparison["auc_diff_ci"][f][1]
        worse = high is not None and high < 0
        rows.append(f'<tr class="{"worse" if worse else ""}"><td>{escape(f)}</td>'
                    f"<td>{_num(comparison['champion_auc'][f])}</td><td>{auc_cell(metrics, f)}</td>"
                    f"<td>{_signed(comparison['auc_diff'][f])}</td><td>{_interval(comparison['auc_diff_ci'][f])}</td></tr>")
    version = comparison["champion_version"]
    head = (f"<th>finding</th><th>champion v{version} AUC</th><th>this model AUC</th>"
            "<th>difference</th><th>95% CI (paired, by patient)</th>")
    mean = (f"<tr><td>mean</td><td>{_num(comparison['champion_mean_auc'])}</td><td>{_num(metrics['mean_auc'])}</td>"
            f"<td>{_signed(comparison['mean_auc_diff'])}</td><td>{_interval(comparison['mean_auc_diff_ci'])}</td></tr>")
    basis = (f"<p>Both scored on the same {comparison['test_images']} test images of "
             f"{comparison['test_patients']} patients that neither model trained on; "
             f"{comparison['resamples']} bootstrap resamples of patients; the mean over the "
             f"{comparison.get('findings_compared')} findings with enough positives and negatives.</p>")
    return text + basis + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}{mean}</tbody></table>"


def model_card_html(name: str, summary: dict, metrics: dict, roc: dict[str, list[dict]], registry: dict,
                    reliability: dict[str, list[dict]] | None = None) -> str:
    """The page: data, per-finding figures, ROC curves, calibration (metrics["calibration"]
    and the `reliability` curves of the test probabilities, {finding: rows, "all findings": rows}),
    subgroups (metrics["subgroups"], a subgroup_report) and the champion decision. Without
    those, their section is left out."""
    title = f"Model card: {name} version {registry['version']}"
    return html_page(title, f"<h1>{escape(title)}</h1>"
            f"<p>Backbone {escape(summary['backbone'])}, "
            f"input {escape(summary['image_size'])}px ({escape(summary['fit'])}), "
            f"{escape(summary.get('inputs', 'image only'))}, "
            f"git commit <code>{escape(summary['git_commit'])}</code>.</p>"
            + data_section(summary, metrics) + findings_section(metrics) + curves_section(roc)
            + calibration_section(metrics.get("calibration"), reliability)
            + subgroups_section(metrics.get("subgroups"))
            + champion_section(metrics, registry), STYLE + SECTIONS_STYLE)
