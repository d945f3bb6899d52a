"""monitor.json as a page a person reads at a glance: the verdict, how far
each feature moved (z, with the line past which it is flagged), and how each
finding's mean probability moved. Inline SVG, no script: it works offline."""
from __future__ import annotations

from pipeline.core.html import escape, html_page
from pipeline.data.synthetic_banner import synthetic_banner

STYLE = """
.verdict { font-size: 1.2em; padding: .6em 1em; border-radius: 4px; }
.drift { background: #fde2e1; border: 1px solid #c0392b; }
.nodrift { background: #e3f4e8; border: 1px solid #2e7d32; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; }
td.num { text-align: right; }
"""
BAR_HEIGHT, LABEL_WIDTH, PLOT_WIDTH = 16, 190, 420


def _x(value: float, low: float, high: float) -> float:
    return LABEL_WIDTH + (value - low) / (high - low) * PLOT_WIDTH


def z_chart(features: list[dict], critical: float) -> str:
    """One bar per tested feature: its z; red where flagged; the dashed line is the flagging z."""
    tested = [f for f in features if f["z"] is not None]
    low = min(0.0, *(f["z"] for f in tested))
    high = max(critical, *(f["z"] for f in tested)) * 1.1 + 0.5
    rows = []
    for i, f in enumerate(tested):
        y = 20 + i * BAR_HEIGHT
        start, end = sorted((_x(0, low, high), _x(f["z"], low, high)))
        colour = "#c0392b" if f["flagged"] else "#7f8c8d"
        rows.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 11}" text-anchor="end">{escape(f["name"])}</text>'
                    f'<rect x="{start:.1f}" y="{y + 2}" width="{max(end - start, 1):.1f}" height="{BAR_HEIGHT - 4}" '
                    f'fill="{colour}"><title>{escape(f["name"])}: z {f["z"]:.2f}, adjusted p '
                    f'{f["p_adjusted"]:.3g}</title></rect>')
    height = 30 + len(tested) * BAR_HEIGHT
    line = _x(critical, low, high)
    return (f'<svg width="{LABEL_WIDTH + PLOT_WIDTH + 40}" height="{height}" role="img" '
            f'aria-label="how far each feature moved">'
            f'<line x1="{_x(0, low, high):.1f}" x2="{_x(0, low, high):.1f}" y1="15" y2="{height - 5}" stroke="#333"/>'
            f'<line x1="{line:.1f}" x2="{line:.1f}" y1="15" y2="{height - 5}" stroke="#c0392b" stroke-dasharray="4 3"/>'
            f'<text x="{line + 3:.1f}" y="12">flagged past z {critical:.2f}</text>{"".join(rows)}</svg>')


def shift_chart(shift: dict[str, dict]) -> str:
    """Each finding's change in mean probability (new - reference), with its 95% CI."""
    spans = [abs(v) for s in shift.values() for v in (s["ci"][0], s["ci"][1]) if v == v]
    reach = max([0.05, *spans]) * 1.1
    rows = []
    for i, (finding, s) in enumerate(shift.items()):
        y = 20 + i * BAR_HEIGHT + BAR_HEIGHT / 2
        low, high = (_x(v, -reach, reach) for v in s["ci"])
        rows.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 4}" text-anchor="end">{escape(finding)}</text>'
                    f'<line x1="{low:.1f}" x2="{high:.1f}" y1="{y}" y2="{y}" stroke="#2c3e50"/>'
                    f'<circle cx="{_x(s["difference"], -reach, reach):.1f}" cy="{y}" r="3.5" fill="#2c3e50">'
                    f'<title>{escape(finding)}: {s["reference_mean"]:.3f} to {s["new_mean"]:.3f}</title></circle>')
    height = 30 + len(shift) * BAR_HEIGHT
    zero = _x(0, -reach, reach)
    return (f'<svg width="{LABEL_WIDTH + PLOT_WIDTH + 40}" height="{height}" role="img" '
            f'aria-label="change in mean probability per finding">'
            f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="15" y2="{height - 5}" stroke="#999" stroke-dasharray="3 3"/>'
            f'<text x="{zero - 3:.1f}" y="12">0</text>'
            f'<text x="{_x(-reach, -reach, reach):.1f}" y="12">{-reach:+.2f}</text>'
            f'<text x="{_x(reach, -reach, reach) - 30:.1f}" y="12">{reach:+.2f}</text>{"".join(rows)}</svg>')


def feature_table(features: list[dict]) -> str:
    head = ("<tr><th>feature</th><th>group</th><th>test</th><th>statistic</th><th>z</th><th>p</th>"
            "<th>adjusted p</th><th>films (reference, new)</th><th>flagged</th></tr>")
    test = {"continuous": "Kolmogorov-Smirnov D", "categorical": "chi-square", "embedding": "MMD\u00b2 (Gaussian)"}

    def cell(value, digits):
        return "" if value is None else f"{value:.{digits}g}"

    rows = []
    for f in features:
        detail = (f'<td colspan="4">not tested: {escape(f["not_tested"])}</td>' if f["not_tested"] else
                  f'<td class="num">{cell(f["statistic"], 3)}</td><td class="num">{cell(f["z"], 3)}</td>'
                  f'<td class="num">{cell(f["p"], 2)}</td><td class="num">{cell(f["p_adjusted"], 2)}</td>')
        rows.append(f'<tr><td>{escape(f["name"])}</td><td>{escape(f["group"])}</td><td>{test[f["kind"]]}</td>'
                    f'{detail}<td>{f["films"][0]}, {f["films"][1]}</td><td>{"yes" if f["flagged"] else ""}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def monitor_page(report: dict, verdict: str) -> str:
    reference, films = report["reference"], report["films"]
    parts = ["<h1>Drift monitor</h1>", synthetic_banner(reference.get("data_source"), "The reference films are")]
    kind = "drift" if report["verdict"] == "drift" else "nodrift"
    parts.append(f'<p class="verdict {kind}" id="verdict">{escape(verdict)}</p>')
    model = report["model"]
    parts.append(f"<p>Model {escape(model['uri'])}" + (f" = version {escape(model['version'])}" if model["version"]
                                                       else "") +
                 f"; reference: {reference['films']} films of its {escape(reference['split'])} split; "
                 f"{films['profiled']} of {films['given']} new films profiled. Verdict at family-wise error "
                 f"{report['alpha']}, {report['permutations']} permutations (docs/monitoring.md).</p>")
    parts.append("<h2>How far each feature moved</h2><p>z: the feature's two-sample statistic in standard "
                 "deviations of its own no-drift (permutation) distribution.</p>")
    parts.append(z_chart(report["features"], report["critical_z"]))
    parts.append("<h2>Mean probability per finding: new minus reference</h2><p>A shift with no image feature "
                 "moved can mean the prevalence changed.</p>")
    parts.append(shift_chart(report["probability_shift"]))
    parts.append("<h2>Every feature</h2>" + feature_table(report["features"]))
    if films["not_profiled"]:
        items = "".join(f"<li>{escape(name)}: {escape(reason)}</li>" for name, reason in films["not_profiled"].items())
        parts.append(f"<h2>Films not profiled</h2><ul>{items}</ul>")
    return html_page("Drift monitor", "\n".join(parts), STYLE)
