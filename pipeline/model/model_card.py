"""The evaluate stage's model card: one self-contained HTML file.

ROC curves are hand-written inline SVG polylines and the reliability diagram is
calibration.reliability_svg inlined (the calibration and subgroup sections are
in model_card_sections). There is no script, external style, font or link, so
model_card.html works copied alone, offline, or as an MLflow artifact. No
timestamps: the same inputs give the same bytes.
"""
from __future__ import annotations

from pipeline.core.html import banner, escape, html_page
from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import SHARE_OF, share_films
from pipeline.model.model_card_sections import SECTIONS_STYLE, calibration_section, subgroups_section
from pipeline.model.model_card_strata import strata_section

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


ROC_MARGIN = 30  # px left of and below the plot square, for the axis labels


def roc_svg(points: list[dict], size: int = PLOT_SIZE, operating_point: tuple[float, float] | None = None,
            title: str = "ROC curve") -> str:
    """An ROC curve as an inline SVG with its axes (1 − specificity across,
    sensitivity up, 0 and 1 marked), the chance diagonal, the curve, and the
    operating point (1 − specificity, sensitivity at the threshold) as a dot."""
    m, total = ROC_MARGIN, size + ROC_MARGIN + 6
    coords = " ".join(f"{m + p['fpr'] * size:.1f},{6 + (1 - p['tpr']) * size:.1f}" for p in points)
    parts = [f'<svg width="{total}" height="{total}" viewBox="0 0 {total} {total}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<rect x="{m}" y="6" width="{size}" height="{size}" fill="none" stroke="#999"/>',
             f'<line x1="{m}" y1="{6 + size}" x2="{m + size}" y2="6" stroke="#bbb" stroke-dasharray="4"/>',
             f'<polyline points="{coords}" fill="none" stroke="#1565c0" stroke-width="2"/>',
             f'<text x="{m}" y="{size + 20}" font-size="10" text-anchor="middle">0</text>',
             f'<text x="{m + size}" y="{size + 20}" font-size="10" text-anchor="middle">1</text>',
             f'<text x="{m + size / 2}" y="{size + 32}" font-size="10" text-anchor="middle">1 − specificity</text>',
             f'<text x="{m - 4}" y="{size + 6}" font-size="10" text-anchor="end">0</text>',
             f'<text x="{m - 4}" y="14" font-size="10" text-anchor="end">1</text>',
             f'<text x="10" y="{6 + size / 2}" font-size="10" text-anchor="middle" '
             f'transform="rotate(-90 10 {6 + size / 2})">sensitivity</text>']
    if operating_point is not None:
        fpr, tpr = operating_point
        parts.append(f'<circle cx="{m + fpr * size:.1f}" cy="{6 + (1 - tpr) * size:.1f}" r="4" fill="#c62828">'
                     f"<title>operating point: sensitivity {tpr:.2f}, specificity {1 - fpr:.2f}</title></circle>")
    return "".join(parts) + "</svg>"


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


def share_cell(metrics: dict, key: str, finding: str) -> str:
    """A sensitivity, specificity, PPV, NPV or F1, or "too few" when the test
    set has fewer positive (or negative) films of the finding than the floor."""
    positives = (metrics.get("test_positives") or {}).get(finding)
    floor = metrics.get("min_positives") or 0
    if positives is not None:
        films = share_films(key, positives, metrics["test_images"])
        if films < floor:
            return f'<span title="{films} {SHARE_OF[key]} &lt; {floor}">too few</span>'
    return _num(metrics[key][finding])


def findings_section(metrics: dict) -> str:
    rows = []
    for f in FINDINGS:
        low, high = metrics["auc_ci_low"][f], metrics["auc_ci_high"][f]
        ci = "–" if low is None else f"{_num(low)}–{_num(high)}"
        cells = [auc_cell(metrics, f), ci, _num(metrics["auprc"][f]), _num(metrics["thresholds"][f]),
                 *(share_cell(metrics, k, f) for k in ("sensitivity", "specificity", "ppv", "npv", "f1"))]
        rows.append(f"<tr><td>{escape(f)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    low, high = metrics["mean_auc_ci"]
    head = "".join(f"<th>{c}</th>" for c in ("finding", *PER_FINDING_COLUMNS))
    method = metrics.get("ci_method") or f"95% CI, {metrics['bootstrap_resamples']} bootstrap resamples"
    interval = (f"{escape(method)}: {_num(low)}–{_num(high)}" if low is not None
                else f"no interval: {escape(metrics.get('ci_missing_reason', 'too little data'))}")
    findings = metrics.get("mean_auc_findings")
    over = (f" over the {findings} finding{'' if findings == 1 else 's'} with at least "
            f"{metrics.get('min_positives')} positive and negative test films" if findings is not None else "")
    return (f"<h2>Per finding (test)</h2><p>Mean AUC {_num(metrics['mean_auc'])}{over} ({interval}); "
            f"{metrics.get('test_images')} test films of {metrics.get('test_patients')} patients; thresholds chosen "
            f"on val by {escape(metrics['threshold_method'])}; exact-match accuracy "
            f"{_num(metrics['exact_match_accuracy'])}.</p>"
            f'<table id="per-finding"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def curves_section(roc: dict[str, list[dict]], metrics: dict | None = None) -> str:
    """Each finding's ROC curve, captioned with its AUC (or why there is none)
    and marked at its operating point."""
    metrics = metrics or {}
    figures = []
    for f in (f for f in FINDINGS if f in roc):
        sensitivity = (metrics.get("sensitivity") or {}).get(f)
        specificity = (metrics.get("specificity") or {}).get(f)
        point = None if sensitivity is None or specificity is None else (1 - specificity, sensitivity)
        auc = f"AUC {auc_cell(metrics, f)}" if metrics.get("auc") else ""
        figures.append(f"<figure>{roc_svg(roc[f], operating_point=point, title=f'ROC curve of {f}')}"
                       f"<figcaption>{escape(f)}: {auc}</figcaption></figure>")
    return ('<h2>ROC curves (test)</h2><p class="note">The dashed diagonal is chance; the red dot is the '
            "operating point at the finding's threshold. A curve over few positives is a staircase of few "
            f'steps: read its AUC cell.</p><div class="curves">{"".join(figures)}</div>')


# A mean ECE above this gets a plain warning that the outputs are not risks.
ECE_WARNING = 0.05


def intended_use_section(summary: dict, metrics: dict) -> str:
    """Banner for synthetic data, what the model is for, and what it is not."""
    from pipeline.data.sources import source_sentence
    from pipeline.data.synthetic_banner import synthetic_banner

    source = summary.get("data_source")
    parts = [synthetic_banner(source, "The films behind this model are",
                              " It was trained and tested on films the project draws itself (docs/synthetic-data.md):"
                              " it shows that the pipeline works, not how well a model reads chest X-rays.")]
    mean_ece = (metrics.get("calibration") or {}).get("mean_ece")
    if mean_ece is not None and mean_ece > ECE_WARNING:
        parts.append(banner(f"The probabilities are not calibrated (mean ECE {mean_ece:.3f}): read them as scores "
                            "that rank films, not as the chance that a finding is present.", "not-calibrated"))
    parts.append(
        "<h2>Intended use and limitations</h2><ul>"
        "<li>Intended use: research and engineering: comparing models and choosing one, in this pipeline. Not a "
        "medical device; no output is a diagnosis, and none replaces a radiologist's reading.</li>"
        f"<li>{escape(source_sentence(source))}</li>"
        "<li>Frontal films (PA or AP) of adults and children as in the training data; lateral films are refused "
        "at prediction. Other scanners, sites and populations than the test set's may score differently.</li>"
        "<li>NIH's labels were mined from radiology reports by text processing and are known to be noisy; a test "
        "AUC measures agreement with those labels.</li>"
        f"<li>A finding with fewer than {escape(metrics.get('min_positives'))} positive or negative test films has "
        "no AUC here (marked too few); its threshold still applies at prediction, untested.</li></ul>")
    return "".join(parts)


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
    compared = [f for f in FINDINGS if comparison["auc_diff"][f] is not None]
    for f in compared:
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
    left_out = [f for f in FINDINGS if f not in compared]
    note = (f'<p class="note">Not compared (too few positive or negative films among those compared): '
            f'{escape(", ".join(left_out))}.</p>' if left_out else "")
    return (text + basis + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}{mean}</tbody></table>"
            + note + operating_comparison_html(comparison))


def operating_comparison_html(comparison: dict) -> str:
    """Both models' sensitivity and specificity at their own thresholds, and
    their mean ECE, on the compared films ("" when not computed)."""
    parts = []
    ece = comparison.get("mean_ece") or {}
    if ece:
        parts.append(f"<p>Mean calibration error (ECE) on these films: champion {_num(ece.get('champion'))}, "
                     f"this model {_num(ece.get('challenger'))} (lower is better).</p>")
    points = comparison.get("operating_points") or {}
    if {"champion", "challenger"} <= set(points):
        theirs, ours = points["champion"], points["challenger"]
        def cell(value):
            return "too few" if value is None else _num(value, 2)

        rows = "".join(f"<tr><td>{escape(f)}</td>" + "".join(
            f"<td>{cell(value)}</td>" for value in (theirs["sensitivity"].get(f), ours["sensitivity"].get(f),
                                                    theirs["specificity"].get(f), ours["specificity"].get(f)))
                       + "</tr>" for f in FINDINGS)
        parts.append('<table id="operating-comparison"><thead><tr><th>finding</th><th>champion sensitivity</th>'
                     "<th>this sensitivity</th><th>champion specificity</th><th>this specificity</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table><p class=\"note\">Each model at its own thresholds.</p>")
    return "".join(parts)


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
            + intended_use_section(summary, metrics)
            + data_section(summary, metrics) + findings_section(metrics) + curves_section(roc, metrics)
            + calibration_section(metrics.get("calibration"), reliability)
            + subgroups_section(metrics.get("subgroups"))
            + strata_section(metrics.get("strata"))
            + champion_section(metrics, registry), STYLE + SECTIONS_STYLE)
