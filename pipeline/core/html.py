"""Self-contained HTML pages (validation report, Grad-CAM gallery, model card).

One skeleton and base style for all three: no script, no external style,
font or link, so each page works copied alone, offline, or as an MLflow
artifact.
"""
from __future__ import annotations

import html

BASE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .5em; }
th { background: #f3f3f3; }
.banner { background: #fff4e5; border-left: 4px solid #e65100; padding: .5em .8em; font-weight: bold; }
"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def banner(text: str, anchor: str) -> str:
    """A warning the reader cannot miss (text, plain), at the top of a page; `anchor` is its id, which tests and
    links find it by."""
    return f'<p class="banner" id="{escape(anchor)}">{escape(text)}</p>'


def html_page(title: str, body: str, style: str = "") -> str:
    """A whole page: `body` (HTML) under `title`, BASE_STYLE then `style` (the page's own rules)."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f"<title>{escape(title)}</title><style>{BASE_STYLE}{style}</style></head><body>\n"
            f"{body}\n</body></html>\n")
