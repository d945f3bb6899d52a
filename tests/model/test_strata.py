"""The labelled audit (evaluate.strata): reading added columns, the figures and
family-wise flags by stratum, checked by simulation, and what the card shows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import ConfigError
from pipeline.core.labels import FINDINGS
from pipeline.data.strata import read_strata, strata_of_films
from pipeline.explain.explanations import STRATA_MISSED_FILE
from pipeline.model.model_card_strata import strata_section
from pipeline.model.strata import MAX_STRATA, MISSED_FILE, missed_in_flagged, strata_report
from pipeline.model.subgroups import STRATUM_PREFIX, underdiagnosis_regression

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Drain,Site")


def write_entry(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [f"{image},No Finding,0,{i + 1},50,M,PA,64,64,0.1,0.1,{drain},{site}"
                        for i, (image, drain, site) in enumerate(rows)]
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")


def test_added_columns_are_read_by_image_id(tmp_path):
    write_entry(tmp_path, [("00000001_000.png", 1, "A"), ("00000002_000.png", 0, ""), ("00000003_000.png", "", "B")])
    table = read_strata("nih", tmp_path, None, ["Drain", "Site"])
    values = strata_of_films(table, ["00000003_000.png", "00000001_000.png", "00000009_000.png"])
    assert values == {"Drain": ["", "1", ""], "Site": ["B", "A", ""]}
    assert read_strata("nih", tmp_path, None, []).empty


def test_a_column_the_table_lacks_is_one_line_naming_it(tmp_path):
    write_entry(tmp_path, [("00000001_000.png", 1, "A")])
    with pytest.raises(ConfigError, match=r"evaluate.strata: .*Data_Entry_2017.csv has no column Scanner "
                                          r"\(its added columns: Drain, Site\)"):
        read_strata("nih", tmp_path, None, ["Drain", "Scanner"])
    with pytest.raises(ConfigError, match="Patient Gender .*own column"):
        read_strata("nih", tmp_path, None, ["Patient Gender"])


def test_folder_labels_csv_columns_are_read(tmp_path):
    (tmp_path / "labels.csv").write_text("path,labels,patient_id,Site\nward/a.png,Mass,p1,north\nb.png,Mass,p2,\n")
    table = read_strata("folder", tmp_path, "labels.csv", ["Site"])
    assert strata_of_films(table, ["b.png", "ward/a.png"]) == {"Site": ["", "north"]}


def films(n: int, rng: np.random.Generator, prevalence: float = 0.3):
    """n films of n // 2 patients: labels, and probabilities that separate them."""
    labels = (rng.random((n, len(FINDINGS))) < prevalence).astype(int)
    probs = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.2, labels.shape), 0, 1)
    return labels, probs, np.arange(n) // 2


def test_a_planted_miss_in_one_stratum_is_flagged_and_named():
    rng = np.random.default_rng(0)
    labels, probs, patients = films(800, rng)
    drain = np.where(rng.random(800) < 0.5, "1", "0")
    target = FINDINGS.index("Pneumothorax")
    # without the drain, half of the pneumothorax films fall below the threshold
    hidden = (drain == "0") & (labels[:, target] == 1) & (rng.random(800) < 0.5)
    probs[hidden, target] = 0.1
    report = strata_report(labels, probs, [0.5] * len(FINDINGS), patients, {"Drain": list(drain)},
                           resamples=400, seed=1)
    flagged = [(g["finding"], g["metric"]) for g in report["flagged"]]
    assert ("Pneumothorax", "sensitivity") in flagged
    gap = next(g for g in report["flagged"] if g["finding"] == "Pneumothorax" and g["metric"] == "sensitivity")
    assert gap["stratum"] == "0" and gap["versus"] == "1" and gap["difference"] < -0.3
    assert gap["interval"][1] < 0 and gap["p_value"] <= 0.05 == report["flag_level"]
    # one pair: 14 findings x 2 metrics, tested together
    assert report["comparisons"] == 28
    figures = report["columns"]["Drain"]["strata"]
    assert figures["0"]["sensitivity"]["Pneumothorax"] < figures["1"]["sensitivity"]["Pneumothorax"] - 0.3
    page = strata_section(report)
    assert "Pneumothorax sensitivity in Drain=0" in page and 'id="slices-Drain"' in page
    # what the explain stage shows: the flagged stratum's missed films, lowest score first
    ids = [f"f{i}.png" for i in range(800)]
    groups = missed_in_flagged(report, labels, probs, dict.fromkeys(FINDINGS, 0.5), ids,
                               {"Drain": list(drain)})
    group = next(g for g in groups if g["finding"] == "Pneumothorax")
    expected = np.flatnonzero((drain == "0") & (labels[:, target] == 1) & (probs[:, target] < 0.5))
    assert group["stratum"] == "0" and sorted(group["image_ids"]) == sorted(ids[i] for i in expected)
    shown = [probs[ids.index(i), target] for i in group["image_ids"]]
    assert shown == sorted(shown) and group["sentence"].startswith("Pneumothorax sensitivity in Drain=0")
    assert MISSED_FILE == STRATA_MISSED_FILE  # the name evaluate writes is the one explain reads


def test_strata_that_do_not_matter_are_flagged_about_5_percent_of_the_time_or_less():
    """A column drawn independently of everything: the report (28 comparisons)
    may flag one with chance at most 5% (maxT permutation). 200 reports; the
    bound is 5% plus 3 binomial standard errors, and the test must not be
    blind either: a difference it should see (next test) it does see."""
    rng = np.random.default_rng(7)
    reports = 200
    flagged = 0
    for _ in range(reports):
        labels, probs, patients = films(300, rng)
        column = np.where(rng.random(300) < 0.4, "a", "b")
        report = strata_report(labels, probs, [0.5] * len(FINDINGS), patients, {"Site": list(column)},
                               resamples=200, seed=int(rng.integers(1 << 30)))
        flagged += bool(report["flagged"])
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / reports)
    assert flagged / reports <= bound, f"{flagged}/{reports} null reports flagged"


def test_few_films_identifiers_and_single_values_give_reasons_not_numbers():
    rng = np.random.default_rng(3)
    labels, probs, patients = films(120, rng)
    column = ["rare" if i < 6 else "common" for i in range(120)]
    ids = [str(i % (MAX_STRATA + 5)) for i in range(120)]
    report = strata_report(labels, probs, [0.5] * len(FINDINGS), patients,
                           {"Kind": column, "Serial": ids, "Ward": ["x"] * 120}, resamples=50)
    assert all(g["difference"] is None and "too few" in g["reason"] for g in report["gaps"])
    assert report["columns"]["Kind"]["strata"]["rare"]["mean_auc"] is None
    assert "identifier" in report["columns"]["Serial"]["reason"]
    assert "nothing to compare" in report["columns"]["Ward"]["reason"]
    assert report["comparisons"] == 0 and not report["flagged"]
    assert "No comparison is flagged (0 made)" in strata_section(report)


def test_promotion_check_reads_strata_when_asked():
    rng = np.random.default_rng(5)
    labels, champion, patients = films(600, rng, prevalence=0.06)
    site = np.where(np.arange(600) % 3 == 0, "B", "A")
    challenger = champion.copy()
    ill_b = (site == "B") & labels.any(axis=1) & (rng.random(600) < 0.5)
    challenger[ill_b] = 0.0  # the challenger calls half the ill films of site B "no finding"
    people = {"patient_id": patients, "age": np.full(600, 50.0), "sex": np.array(["M"] * 600, dtype=object),
              "view": np.array(["PA"] * 600, dtype=object), STRATUM_PREFIX + "Site": site.astype(object)}
    cutoffs = [0.5] * len(FINDINGS)
    plain = underdiagnosis_regression(labels, champion, cutoffs, challenger, cutoffs, people, resamples=200)
    with_strata = underdiagnosis_regression(labels, champion, cutoffs, challenger, cutoffs, people, resamples=200,
                                            attributes=[], strata=True)
    assert "stratum:Site/B" not in plain["worse_slices"]
    assert with_strata["worse_slices"] == ["stratum:Site/B"]
    from pipeline.model.promotion import subgroup_refusals

    assert subgroup_refusals(with_strata)[0].startswith("underdiagnosis in Site=B +")


def test_read_back_frame_is_text(tmp_path):
    write_entry(tmp_path, [("00000001_000.png", 1, "A")])
    table = read_strata("nih", tmp_path, None, ["Drain"])
    assert isinstance(table, pd.DataFrame) and table.loc["00000001_000.png", "Drain"] == "1"
