"""What each ingest.source is, in the words every page that shows a figure uses.

A figure measured on the synthetic phantom says nothing about how a model reads
real films; every page that shows one (version description, model card, runs
table name) says so with SYNTHETIC_WARNING.
"""
from __future__ import annotations

# ingest.source -> what the data is
SOURCE_NAMES = {
    "phantom": "synthetic chest phantom",
    "nih": "NIH ChestX-ray14",
    "kaggle-sample": "NIH ChestX-ray14 (Kaggle's 5,606-image sample)",
    "folder": "your own films (folder source)",
}
SYNTHETIC_SOURCES = frozenset({"phantom"})
SYNTHETIC_WARNING = "synthetic phantom: these figures say nothing about clinical performance"


def is_synthetic(source: str | None) -> bool:
    return source in SYNTHETIC_SOURCES


def source_name(source: str | None) -> str:
    """"synthetic chest phantom", "NIH ChestX-ray14", ... ("unknown data source" for None)."""
    if source is None:
        return "unknown data source"
    return SOURCE_NAMES.get(source, source)


def source_sentence(source: str | None) -> str:
    """One sentence naming the data, with the warning when it is synthetic."""
    text = f"Data: {source_name(source)} (ingest.source {source})."
    return f"{text} {SYNTHETIC_WARNING[0].upper()}{SYNTHETIC_WARNING[1:]}." if is_synthetic(source) else text
