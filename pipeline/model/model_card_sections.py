"""The model card's "Subgroups" and "Calibration" sections (HTML fragments).

Inputs are the evaluate stage's metrics["subgroups"] (a
pipeline.model.subgroups.subgroup_report) and metrics["calibration"] (ECE on
test, with "before" when a recalibration was fitted), and the reliability
curves of the served test probabilities. Every value is escaped; figures show
3 decimals; a value the report left out as unreliable reads "too small", with
the reason as a tooltip and a note, never a number. Below the age and sex x
age tables, how many test images had no age and so are in none of their
slices (the report's "age_unknown"). The reliability diagram is
calibration.reliability_svg, inlined: no script, nothing from the network.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.core.html import escape
from pipeline.core.labels import FINDINGS
from pipeline.model.calibration import POOLED, reliability_svg
from pipeline.model.subgroups import ATTRIBUTES

SECTIONS_STYLE = """
h3 { font-size: 1em; margin: 1.2em 0 .4em; }
td.small { color: #777; font-style: italic; }
ul.gaps li { margin: .25em 0; } ul.gaps li.flagged { background: #fdecea; font-weight: bold; }
details { margin: .4em 0 1em; } summary { cursor: pointer; font-size: .9em; }
.note { font-size: .88em; color: #444; max-width: 60em; }
"""

METRIC_LABELS = {"underdiagnosis_rate": "Underdiagnosis rate", "mean_auc": "Mean AUC"}
TOO_SMALL = "too small"
NO_IMAGES = "no test images in the slice"
METHOD_LABELS = {"platt": "Platt scaling", "isotonic": "isotonic regression"}
FINDINGS_IN_DIAGRAM = 3  # besides the pooled curve: the findings with the largest ECE
# The xmlns attribute is for a standalone .svg file; HTML puts inline <svg> in the SVG namespace itself.
SVG_NAMESPACE = ' xmlns="http://www.w3.org/2000/svg"'


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ci(bounds: Sequence[float] | None, joiner: str = "–") -> str:
    return "–" if not bounds or bounds[0] is None else f"{bounds[0]:.3f}{joiner}{bounds[1]:.3f}"


def _small(reason: str | None) -> str:
    return f'<td class="small" title="{escape(reason or "too few images in the slice")}">{TOO_SMALL}</td>'


def _lower(label: str) -> str:
    return label[:1].lower() + label[1:]


def _cell(value: float | None, reason: str | None) -> str:
    return _small(reason) if value is None else f"<td>{_num(value)}</td>"


# --- subgroups --------------------------------------------------------------

SLICE_COLUMNS = ("slice", "images (patients)", "ill images", "findings with AUC", "mean AUC", "95% CI",
                 "underdiagnosis rate", "95% CI")


def attribute_label(name: str, unknown: str | None = None) -> str:
    """How the model card names a declared attribute ("age band"); `unknown` (else the name) for another."""
    return ATTRIBUTES[name].label if name in ATTRIBUTES else (name if unknown is None else unknown)


def age_unknown_note(attribute: str, report: Mapping) -> str:
    """"Age unknown: N images, left out of age slices." under an age table; "" elsewhere
    or for a report written before the count."""
    unknown = report.get("age_unknown")
    if attribute not in ATTRIBUTES or not ATTRIBUTES[attribute].needs_age or not unknown:
        return ""
    return f'<p class="note age-unknown">{escape(unknown["note"].capitalize())}.</p>'


def slice_table(attribute: str, slices: Mapping[str, Mapping], extra_note: str = "") -> str:
    """One attribute's slices: size, mean AUC and underdiagnosis rate with their
    intervals, then notes for the "too small" cells, `extra_note` (HTML) and the
    per-finding detail."""
    rows, notes = [], []
    for name, fig in slices.items():
        why = fig.get("unreliable") or {}
        cells = [f"<td>{escape(name)}</td>", f"<td>{escape(fig['n'])} ({escape(fig['patients'])})</td>",
                 f"<td>{escape(fig['ill_images'])}</td>",
                 f"<td>{sum(v is not None for v in fig['auc'].values())}/{len(fig['auc'])}</td>"]
        reasons = []
        for metric in ("mean_auc", "underdiagnosis_rate"):
            if fig[metric] is None:
                reason = NO_IMAGES if not fig["n"] else why.get(metric, "")
                cells += [_small(reason), "<td></td>"]
                reasons.append(reason if not fig["n"] else f"{_lower(METRIC_LABELS[metric])}: {reason}")
            else:
                cells += [f"<td>{_num(fig[metric])}</td>", f"<td>{_ci(fig[f'{metric}_ci'])}</td>"]
        if reasons:
            notes.append(f"{escape(name)} ({escape('; '.join(dict.fromkeys(reasons)))})")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{c}</th>" for c in SLICE_COLUMNS)
    note = (f'<p class="note">{TOO_SMALL.capitalize()}: {", ".join(notes)}.</p>' if notes else "")
    return (f"<h3>By {escape(attribute_label(attribute))}</h3>"
            f'<table class="slices" id="slices-{escape(attribute)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{note}{extra_note}{per_finding_details(attribute, slices)}")


def per_finding_details(attribute: str, slices: Mapping[str, Mapping]) -> str:
    """A collapsed table per attribute: each finding's AUC and sensitivity /
    specificity (at the operating thresholds) in each slice."""
    names = list(slices)
    head = "<th>finding</th>" + "".join(f'<th colspan="2">{escape(n)}</th>' for n in names)
    sub = "<th></th>" + "<th>AUC</th><th>sens / spec</th>" * len(names)
    rows = []
    for f in FINDINGS:
        cells = [f"<td>{escape(f)}</td>"]
        for name in names:
            fig = slices[name]
            reason = (fig.get("unreliable") or {}).get(f)
            cells.append(_cell(fig["auc"].get(f), reason))
            sens, spec = fig["sensitivity"].get(f), fig["specificity"].get(f)
            cells.append(_small(reason) if sens is None and spec is None else
                         f"<td>{_num(sens) if sens is not None else TOO_SMALL} / "
                         f"{_num(spec) if spec is not None else TOO_SMALL}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    label = escape(attribute_label(attribute))
    return (f"<details><summary>Per finding, by {label}: AUC, sensitivity and specificity</summary>"
            f"<table><thead><tr>{head}</tr><tr>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table></details>")


def _confidence(gap: Mapping) -> str:
    level = gap.get("confidence")
    if level is None or abs(level - 0.95) < 1e-9:
        return "95% CI"
    return f"{100 * level:.3g}% family-wise CI"


def gap_sentence(gap: Mapping) -> str:
    """E.g. "Underdiagnosis rate by sex: F is higher than M by 0.210 (95% CI 0.050 to 0.370): flagged."."""
    label = f"{METRIC_LABELS.get(gap['metric'], gap['metric'])} by {attribute_label(gap['attribute'], '')}"
    if gap.get("difference") is None:
        return f"{escape(label)}: not compared ({escape(gap.get('reason', 'fewer than two slices'))})."
    verdict = "flagged" if gap["flagged"] else "not significant"
    test = ""
    if gap.get("p_value") is not None:
        test = (f"; family-wise permutation p = {gap['p_value']:.3f} over {gap['slices_compared']} slices, "
                f"{gap.get('permutations')} shuffles")
    interval = f"{_confidence(gap)} {_ci(gap.get('ci'), ' to ')}" if gap.get("ci") else "no interval: no spread"
    return (f"{escape(label)}: {escape(gap['high'])} is higher than {escape(gap['low'])} by "
            f"{_num(gap['difference'])} ({interval}{test}): {verdict}.")


def gaps_list(gaps: Sequence[Mapping], attributes: Sequence[str]) -> str:
    """Flagged gaps first (marked), then per attribute either "No gap between
    its slices is significant" or its remaining gaps."""
    items = [f'<li class="flagged">{gap_sentence(g)}</li>' for g in gaps if g.get("flagged")]
    for attribute in attributes:
        own = [g for g in gaps if g.get("attribute") == attribute]
        rest = [g for g in own if not g.get("flagged")]
        if not rest:
            continue
        label = escape(attribute_label(attribute))
        compared = any(g.get("difference") is not None for g in rest)
        lead = f"No gap between {label} slices is significant. " if compared and len(rest) == len(own) else ""
        items.append(f"<li>{lead}{' '.join(gap_sentence(g) for g in rest)}</li>")
    return f'<ul class="gaps">{"".join(items)}</ul>'


def subgroups_section(report: Mapping | None) -> str:
    """The "Subgroups" section of a subgroup_report; "" without one."""
    if not report:
        return ""
    attributes = [a for a in ATTRIBUTES if a in report]
    settings = report.get("settings") or {}
    minimum = settings.get("min_slice_positives", "the minimum")
    intro = (
        '<p class="note">The underdiagnosis rate of a slice is the fraction of its films with at least one '
        'finding that the model calls "no finding" (no probability at or above its threshold), as in '
        "Seyyed-Kalantari et al., Nature Medicine 2021 (underdiagnosis bias of chest X-ray classifiers in "
        "under-served patient populations). Intervals are 95% bootstrap intervals over the slice's patients"
        f"{_resamples(settings)}; a value needs at least {escape(minimum)} positive (and negative) images, "
        f"or ill images for the underdiagnosis rate, in the slice, and films of at least "
        f"{escape(settings.get('min_slice_patients', 'the minimum number of'))} patients, else it reads "
        f"“{TOO_SMALL}” with the reason. A bootstrap with no spread gives no interval. Mean AUC "
        "averages the findings with an AUC in that slice. Underdiagnosis rates also differ when slices differ "
        "in how many findings their ill films carry: a film with several findings is less likely to be called "
        "“no finding”, so a gap is a prompt to look, not by itself proof of bias.</p>")
    gaps = report.get("gaps") or []
    return (f'<section id="subgroups"><h2>Subgroups (test)</h2>{intro}<h3>Gaps between slices</h3>'
            '<p class="note">Per attribute and metric, the highest against the lowest slice, with the 95% '
            "bootstrap interval of that pair's difference. Flagged by a permutation test of the attribute's "
            "largest gap (its slices and both metrics together; slice membership shuffled by patient), at 5% "
            "family-wise, since the pair was picked after looking at all of them: under no true gap it flags "
            "at most 5% of the time.</p>"
            + gaps_list(gaps, attributes)
            + "".join(slice_table(a, report[a], age_unknown_note(a, report)) for a in attributes) + "</section>")


def _resamples(settings: Mapping) -> str:
    parts = []
    if settings.get("resamples") is not None:
        parts.append(f"{escape(settings['resamples'])} resamples")
    if settings.get("images") is not None:
        parts.append(f"{escape(settings['images'])} test images of {escape(settings.get('patients', '?'))} patients")
    return f" ({', '.join(parts)})" if parts else ""


# --- calibration ------------------------------------------------------------

def ece_table(calibration: Mapping) -> str:
    before = calibration.get("before")
    head = "<th>finding</th>" + ("<th>ECE before recalibration</th>" if before else "") + "<th>ECE</th>"
    rows = []
    for f in (f for f in FINDINGS if f in (calibration.get("ece") or {})):
        old = f"<td>{_num(before['ece'].get(f))}</td>" if before else ""
        rows.append(f"<tr><td>{escape(f)}</td>{old}<td>{_num(calibration['ece'][f])}</td></tr>")
    for label, key in (("mean over findings", "mean_ece"), ("pooled (all findings)", "pooled_ece")):
        old = f"<td>{_num(before.get(key))}</td>" if before else ""
        rows.append(f'<tr class="decision"><td>{label}</td>{old}<td>{_num(calibration.get(key))}</td></tr>')
    return f'<table id="ece"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def reliability_figures(reliability: Mapping[str, Sequence[Mapping]], ece: Mapping[str, float | None]) -> str:
    """The pooled curve, and the FINDINGS_IN_DIAGRAM worst-calibrated findings' curves, as inline SVG."""
    figures = []
    if reliability.get(POOLED):
        figures.append((reliability_svg({POOLED: reliability[POOLED]}, "Reliability, all findings pooled"),
                        "All findings pooled"))
    # without ECE figures, the first findings; sorted() keeps FINDINGS order among equal keys
    worst = sorted((f for f in FINDINGS if reliability.get(f)), key=lambda f: -(ece.get(f) or 0))
    worst = worst[:FINDINGS_IN_DIAGRAM]
    if worst:
        caption = (f"The {len(worst)} findings with the largest ECE" if ece else
                   f"The first {len(worst)} findings")
        figures.append((reliability_svg({f: reliability[f] for f in worst}, f"Reliability: {_lower(caption)}"),
                        caption))
    return '<div class="curves">' + "".join(
        f"<figure>{svg.replace(SVG_NAMESPACE, '', 1)}<figcaption>{escape(caption)}</figcaption></figure>"
        for svg, caption in figures) + "</div>"


def calibration_section(calibration: Mapping | None, reliability: Mapping | None = None) -> str:
    """The "Calibration" section: ECE per finding (and before recalibration,
    when one was fitted) and the reliability diagram; "" without either input."""
    if reliability is None and calibration:  # a whole calibration_report carries its curves
        reliability = calibration.get("reliability")
    if not calibration and not reliability:
        return ""
    parts = ['<section id="calibration"><h2>Calibration (test)</h2>']
    if calibration:
        method = calibration.get("method", "none")
        how = ("No recalibration: the model's own probabilities." if method == "none" else
               f"Recalibrated per finding by {escape(METHOD_LABELS.get(method, method))}, fitted on validation; "
               "the before column is the raw outputs' ECE on the same test images.")
        parts.append(f'<p class="note">Expected calibration error (ECE): the image-weighted mean of |mean predicted '
                     f"probability − observed frequency| over {escape(calibration.get('n_bins', '?'))} equal-mass "
                     f"bins (each holds the same number of test images). {how}</p>{ece_table(calibration)}")
    if reliability:
        parts.append("<h3>Reliability diagram</h3><p class=\"note\">Mean predicted probability against observed "
                     "frequency per bin; the dashed diagonal is perfect calibration. Hover a point for its "
                     "figures.</p>" + reliability_figures(reliability, (calibration or {}).get("ece") or {}))
    return "".join(parts) + "</section>"
