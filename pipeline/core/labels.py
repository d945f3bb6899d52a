"""The domain's label conventions, in one place.

Every module that needs the finding names, their order or the NIH
"Finding Labels" string format imports them from here.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

# NIH ChestX-ray14's 14 findings, spelled as NIH spells them, in the order
# the model's outputs use. Alphabetical, as in the NIH release notes.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NUM_FINDINGS = len(FINDINGS)
NO_FINDING = "No Finding"
# NIH's BBox_List_2017.csv spells one finding differently from the labels.
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
LABEL_SEPARATOR = "|"

SEXES = ("M", "F")
VIEWS = ("PA", "AP")
# Patient age in years that validation accepts (NIH has a few typos above 120).
MIN_AGE, MAX_AGE = 0, 120
SPLITS = ("train", "val", "test")


class LabelError(ValueError):
    """A "Finding Labels" value that is not in NIH's vocabulary."""


def parse_finding_labels(text: str) -> list[int]:
    """Turn an NIH "Finding Labels" string into a 14-long multi-hot list.

    "No Finding" is all-negative and may not be combined with a finding.
    """
    names = [n.strip() for n in str(text).split(LABEL_SEPARATOR)]
    if names == [NO_FINDING]:
        return [0] * NUM_FINDINGS
    unknown = [n for n in names if n not in FINDINGS]
    if unknown:
        if NO_FINDING in names:
            raise LabelError(f"'{NO_FINDING}' combined with findings in {text!r}")
        raise LabelError(f"unknown finding {unknown[0]!r} in {text!r}")
    present = set(names)
    return [int(f in present) for f in FINDINGS]


def format_finding_labels(multi_hot: Sequence[int] | Iterable[int]) -> str:
    """The inverse of parse_finding_labels: multi-hot to NIH's string."""
    names = [f for f, v in zip(FINDINGS, multi_hot) if int(v)]
    return LABEL_SEPARATOR.join(names) if names else NO_FINDING
