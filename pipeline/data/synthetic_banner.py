"""The one warning every page that shows the films or their figures carries
when they come from a synthetic source (the validation report, the model
card, the Grad-CAM gallery, the monitor page): the same words, markup and
style, found by id="synthetic". Apart from pipeline.data.sources so that the
stages that render no page (ingest, preprocess, train) do not load HTML code.
"""
from __future__ import annotations

from pipeline.core.html import banner
from pipeline.data.sources import SYNTHETIC_WARNING, is_synthetic


def synthetic_banner(data_source: str | None, subject: str = "These films are", more: str = "") -> str:
    """'<subject> a synthetic phantom: ...' then `more`, as a banner, for a synthetic `data_source`; "" for a real
    (or unknown) one."""
    if not is_synthetic(data_source):
        return ""
    return banner(f"{subject} a {SYNTHETIC_WARNING}.{more}", "synthetic")
