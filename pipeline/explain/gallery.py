"""The explain stage's gallery page: one self-contained HTML file.

Every overlay is embedded as a base64 data URI and there is no script, no
external style or font and no link off the page, so index.html works copied
alone, offline, or as an MLflow artifact. No timestamps: the same entries
give the same bytes.
"""
from __future__ import annotations

import base64

from pipeline.core.html import escape, html_page
from pipeline.core.labels import FINDINGS
from pipeline.data.synthetic_banner import synthetic_banner
from pipeline.explain.localisation import iobb_key

PAGE_FILE = "index.html"
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
KIND_NAMES = {"TP": "true positive", "FP": "false positive", "FN": "missed (false negative)"}
PER_FINDING_KINDS = ("TP", "FP", "FN")  # a finding's section, in this order
STYLE = """
body { max-width: 80em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
th, td { text-align: right; }
th:first-child, td:first-child { text-align: left; }
.random { color: #777; }
td.too-few { text-align: left; color: #777; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 260px; border: 1px solid #ddd; padding: .4em; }
figure img { width: 256px; height: 256px; image-rendering: pixelated; display: block; }
figcaption { font-size: .85em; line-height: 1.4; margin-top: .3em; }
.kind { display: inline-block; padding: 0 .4em; border-radius: .3em; color: #fff; font-weight: bold; }
.TP { background: #2e7d32; } .FP { background: #c62828; } .FN { background: #6a1b9a; }
.legend span { display: inline-block; width: 1em; height: .8em; vertical-align: middle; margin-right: .3em; }
"""


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _score_cells(scores: dict, keys: list[str]) -> str:
    return "".join(
        f'<td>{_rate(scores[key])} <span class="random">({_rate(scores[key + "_random"])})</span></td>'
        for key in keys
    )


def _score_row(scores: dict, keys: list[str]) -> str:
    """The score cells, or one cell with the reason there are none (too few boxed films)."""
    if scores.get("reason"):
        return f'<td colspan="{len(keys)}" class="too-few">{escape(scores["reason"])}</td>'
    return _score_cells(scores, keys)


def localisation_table(localisation: dict, iobb_thresholds: list[float]) -> str:
    """Overall, then each finding that has boxed test images: n and every score
    with the random map's in brackets, or why there are none."""
    keys = ["pointing_game", *map(iobb_key, iobb_thresholds)]
    head = "<th>finding</th><th>n</th><th>pointing game</th>" + \
        "".join(f"<th>T(IoBB) &gt; {t:g}</th>" for t in iobb_thresholds)
    rows = [("all findings", localisation["overall"])]
    rows += [(finding, scores) for finding, scores in localisation["per_finding"].items() if scores["n"]]
    body = "".join(f"<tr><td>{escape(name)}</td><td>{scores['n']}</td>{_score_row(scores, keys)}</tr>"
                   for name, scores in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _localisation_text(entry: dict, iobb_thresholds: list[float]) -> str:
    if entry["pointing_hit"] is None:
        return "no box for this finding on this image"
    marks = ["✓" if entry["best_iobb"] > t else "✗" for t in iobb_thresholds]
    hits = ", ".join(f"&gt;&nbsp;{t:g}&nbsp;{mark}" for t, mark in zip(iobb_thresholds, marks))
    peak = "inside" if entry["pointing_hit"] else "outside"
    return f"peak {peak} the box; best IoBB {entry['best_iobb']:.2f} ({hits})"


def _card(entry: dict, iobb_thresholds: list[float]) -> str:
    kind = entry["kind"]
    alt = f"{KIND_NAMES[kind]} {entry['finding']} on {entry['image_id']}"
    return (
        f'<figure><img src="{data_uri(entry["jpeg"])}" alt="{escape(alt)}">'
        f'<figcaption><span class="kind {kind}">{kind}</span> <code>{escape(entry["image_id"])}</code><br>'
        f'model score {entry["probability"]:.3f} (threshold {entry["threshold"]:.3f})<br>'
        f'{_localisation_text(entry, iobb_thresholds)}</figcaption></figure>'
    )


def _missed_line(count: dict, shown: int) -> str:
    if not count["positives"]:
        return "<p>No test film has this finding.</p>"
    lowest = {0: ".", 1: "; the lowest-scoring:"}.get(shown, f"; the {shown} lowest-scoring:")
    films = "the test film" if count["positives"] == 1 else f"the {count['positives']} test films"
    return f"<p>Missed (score below the threshold): {count['missed']} of {films} with this finding{lowest}</p>"


def _finding_section(finding: str, entries: list[dict], iobb_thresholds: list[float],
                     missed: dict | None = None) -> str:
    parts = [f'<h2 id="{escape(finding)}">{escape(finding)}</h2>']
    for kind in PER_FINDING_KINDS:
        chosen = [e for e in entries if e["kind"] == kind]
        empty = f"<p>No {KIND_NAMES[kind]} at this finding's threshold in the test split.</p>"
        if kind == "FN" and missed is not None:
            parts.append(_missed_line(missed, len(chosen)))
            empty = "<p>None shown (explain.false_negatives is 0).</p>" if missed["missed"] else ""
        cards = "".join(_card(e, iobb_thresholds) for e in chosen) or empty
        parts.append(f'<div class="cards">{cards}</div>')
    return "\n".join(parts)


def strata_section(groups: list[dict], missed: list[dict], iobb_thresholds: list[float]) -> str:
    """The films each flagged stratum misses (evaluate.strata), with their heatmaps; "" without a flag."""
    if not groups:
        return ""
    parts = ['<h2 id="strata">Missed in flagged strata</h2>',
             "<p>Each sensitivity difference the evaluate stage flagged between strata of an evaluate.strata "
             "column (the model card's Strata section), and the films of the worse stratum that have the finding "
             "but score below its threshold, lowest score first (as many as explain.top_k). Look for what they "
             "share.</p>"]
    for index, group in enumerate(groups):
        cards = "".join(_card(e, iobb_thresholds) for e in missed if e["group"] == index) or \
            "<p>No missed film to show.</p>"
        parts.append(f"<h3>{escape(group['sentence'])}: {len(group['image_ids'])} missed in "
                     f"{escape(group['column'])}={escape(group['stratum'])}</h3><div class=\"cards\">{cards}</div>")
    return "\n".join(parts)


def render_gallery_html(entries: list[dict], metrics: dict, groups: list[dict] | None = None,
                        missed: list[dict] | None = None) -> str:
    """The page for the explain stage's gallery `entries` (pipeline.explain.explanations.explain_examples)
    and its `metrics` (pipeline.explain.explanations.explain_metrics); with `groups` (evaluate's flagged
    strata) and their `missed` entries, a section of the films each misses."""
    method = METHOD_NAMES[metrics["method"]]
    thresholds = metrics["iobb_thresholds"]
    fraction = metrics["heatmap_threshold"]
    nav = " · ".join([f'<a href="#{escape(f)}">{escape(f)}</a>' for f in FINDINGS]
                     + (['<a href="#strata">missed in flagged strata</a>'] if groups else []))
    parts = [
        f"<h1>{method} gallery: test split</h1>",
        synthetic_banner(metrics.get("data_source")),
        f"<p>Per finding, the test images with the highest scores among the true positives (TP: finding "
        f"present, score at or above the finding's threshold, chosen on the validation split) and the false "
        f"positives (FP: finding absent, score at or above the threshold), then those with the lowest scores "
        f"among the missed films (FN: finding present, score below the threshold). What the missed films "
        f"share, and the films it finds do not (a chest drain, a site's markers), is a failure no column "
        f"names: name it as a column (evaluate.strata) to measure it. A score is the model's output, not "
        f"the probability that the finding is present (the model card's calibration section says how far "
        f"apart they are). Heatmaps: {method} on layer "
        f"<code>{escape(metrics['layer'])}</code>, scaled to their maximum.</p>",
        '<p class="legend"><span style="background:#0f0"></span>ground-truth box '
        f'<span style="background:#fff;border:1px solid #999"></span>regions of the heatmap at or above '
        f'{fraction:g} of its maximum <span style="background:#f0f"></span>(cross) the heatmap\'s peak</p>',
        "<h2>Localisation</h2>",
        "<p>Every boxed test image (up to the cap), scored as in Wang et al. 2017 (ChestX-ray8). Pointing "
        "game: the heatmap's peak lies in the box. T(IoBB): some detected region's bounding box has "
        "intersection / its own area above T. In brackets: a random map of the same smoothness. A score "
        f"needs at least {metrics['min_localisation_images']} boxed films (explain.min_localisation_images): "
        "one film's hit would read as a rate of 1.00.</p>",
        localisation_table(metrics["localisation"], thresholds),
        f"<p>{nav}</p>",
    ]
    for finding in FINDINGS:
        parts.append(_finding_section(finding, [e for e in entries if e["finding"] == finding], thresholds,
                                      metrics.get("missed", {}).get(finding)))
    if groups:
        parts.append(strata_section(groups, missed or [], thresholds))
    return html_page(f"{method} gallery: test split", "\n".join(parts), STYLE)
