import pytest

from pipeline.core.labels import FINDINGS, LabelError, format_finding_labels, parse_finding_labels


def test_fourteen_findings_spelled_as_nih():
    assert len(FINDINGS) == 14
    assert "Pleural_Thickening" in FINDINGS and "No Finding" not in FINDINGS
    assert list(FINDINGS) == sorted(FINDINGS)


def test_parse_and_format_round_trip():
    vector = parse_finding_labels("Effusion|Cardiomegaly")
    assert vector[FINDINGS.index("Effusion")] == 1 and vector[FINDINGS.index("Cardiomegaly")] == 1
    assert sum(vector) == 2
    assert format_finding_labels(vector) == "Cardiomegaly|Effusion"
    assert parse_finding_labels("No Finding") == [0] * 14
    assert format_finding_labels([0] * 14) == "No Finding"


@pytest.mark.parametrize("text,problem", [("Pneumonitis", "unknown finding 'Pneumonitis'"),
                                          ("No Finding|Mass", "combined with findings")])
def test_bad_labels_are_named(text, problem):
    with pytest.raises(LabelError, match=problem):
        parse_finding_labels(text)
