"""`cxr evaluate`: a hospital scores the registered champion on its own
labelled films. Real NIH PNGs from ../shared with their real labels, laid out
as a hospital might (subfolders, upper-case extensions, a DICOM), a small
champion in a temp MLflow store."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core.labels import FINDINGS, parse_finding_labels
from pipeline.serve.cli import main as cxr_main
from pipeline.serve.predict import load_model
from tests.model.test_cli_inputs import grey_of, metadata_model, write_dicom  # noqa: F401 - a fixture
from tests.model.test_predict import register_test_models

NORMAL, ABNORMAL = 6, 6


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return register_test_models(tmp_path_factory.mktemp("external"))


def nih_rows(nih_subset: Path) -> pd.DataFrame:
    """Data_Entry rows of films on disk: NORMAL "No Finding" ones, then ABNORMAL with findings."""
    entries = pd.read_csv(nih_subset / "Data_Entry_2017_v2020.csv.gz")
    on_disk = {p.name for p in (nih_subset / "images_001" / "images").glob("*.png")}
    rows = entries[entries["Image Index"].isin(on_disk)].sort_values("Image Index")
    normal = rows[rows["Finding Labels"] == "No Finding"].head(NORMAL)
    return pd.concat([normal, rows[rows["Finding Labels"] != "No Finding"].head(ABNORMAL)], ignore_index=True)


def hospital_folder(nih_subset: Path, root: Path) -> tuple[Path, dict[str, Path], dict[str, str]]:
    """ROOT with the films and labels.csv. Returns the CSV, {CSV path: file on disk} of the films that
    can be scored, and {CSV path: labels} for them."""
    source = nih_subset / "images_001" / "images"
    lines = ["path,labels,patient_id,age,sex,view"]
    films, labels = {}, {}
    for i, row in nih_rows(nih_subset).iterrows():
        name = row["Image Index"]
        stem = Path(name).stem
        if i == 0:
            listed, on_disk = f"ward-a/2024/{name}", root / "ward-a" / "2024" / name
        elif i == 1:
            listed, on_disk = f"{stem}.PNG", root / f"{stem}.PNG"
        elif i == 2:  # the CSV says .png, the scanner wrote .PNG
            listed, on_disk = name, root / f"{stem}.PNG"
        elif i == 3:
            listed, on_disk = f"dicom/{stem}.dcm", root / "dicom" / f"{stem}.dcm"
        else:
            listed, on_disk = name, root / name
        on_disk.parent.mkdir(parents=True, exist_ok=True)
        if on_disk.suffix == ".dcm":
            write_dicom(on_disk, grey_of(source / name), "MONOCHROME2", 8, ViewPosition=row["View Position"])
        else:
            shutil.copyfile(source / name, on_disk)
        films[listed], labels[listed] = on_disk, row["Finding Labels"]
        lines.append(f"{listed},{row['Finding Labels']},P{row['Patient ID']},{row['Patient Age']},"
                     f"{row['Patient Gender']},{row['View Position']}")
    (root / "broken.png").write_text("a scanner's error page, saved as .png")
    lines += ["broken.png,Effusion,P1,40,F,PA",        # on disk, but not a film: quarantined
              "not-here.png,Mass,P2,50,M,PA",          # not on disk: a rejected row
              "ward-b/odd.png,Fracture,P3,60,F,AP",    # not one of the 14 findings: a rejected row
              "pipe.png,Edema,P4,45,M,PA"]             # a named pipe: read, it would block the run forever
    os.mkfifo(root / "pipe.png")
    csv = root / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, films, labels


FLOOR = 2


def test_cxr_evaluate_scores_a_hospitals_films(registry, nih_subset, tmp_path, capsys):
    root = tmp_path / "hospital"
    csv, films, labels = hospital_folder(nih_subset, root)
    out = tmp_path / "external"
    # a handful of films: a floor of 2 positives and negatives (the default, 10, would withhold every AUC)
    status = cxr_main(["evaluate", str(root), "--labels", str(csv), "--out", str(out), "--bootstrap", "200",
                       "--min-positives", str(FLOOR), "--tracking-uri", registry.store])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "external.json").read_text())
    assert report["min_positives"] == FLOOR

    assert report["model"]["uri"] == "models:/chestxray@champion" and report["model"]["version"] == "1"
    assert report["rows"] == len(films) + 4 and report["images"] == len(films)
    assert [(row["line"], row["image_id"]) for row in report["rejected_rows"]] == [
        (len(films) + 3, "not-here.png"), (len(films) + 4, "ward-b/odd.png")]
    assert [(film["image_id"], film["reason"]) for film in report["quarantined"]] == [
        ("broken.png", "not a readable PNG, JPEG or DICOM image (its first bytes are none of their signatures)"),
        ("pipe.png", "is a named pipe (FIFO), not an image file")]
    assert "patient_ids" not in report["reader"]

    truth = np.array([parse_finding_labels(text) for text in labels.values()])
    champion = load_model("models:/chestxray@champion", tracking_uri=registry.store)
    predicted = champion.predict(np.stack([champion.preprocess(path) for path in films.values()]))
    for i, finding in enumerate(FINDINGS):
        entry = report["findings"][finding]
        positives = int(truth[:, i].sum())
        assert (entry["positives"], entry["negatives"]) == (positives, len(films) - positives), finding
        assert entry["threshold"] == pytest.approx(champion.thresholds[finding])
        if min(positives, len(films) - positives) >= FLOOR:
            assert entry["auc"] == pytest.approx(roc_auc_score(truth[:, i], predicted[:, i]), abs=1e-4)
            assert entry["auc_missing_reason"] is None
            called = predicted[:, i] >= champion.thresholds[finding]
            assert entry["sensitivity"] == pytest.approx(called[truth[:, i] == 1].mean())
            assert entry["specificity"] == pytest.approx((~called[truth[:, i] == 0]).mean())
        else:
            few = "positives" if positives < FLOOR else "negatives"
            count = positives if few == "positives" else len(films) - positives
            assert entry["auc"] is None and entry["auc_missing_reason"] == f"too few {few} (n={count})"
    defined = [e["auc"] for e in report["findings"].values() if e["auc"] is not None]
    assert defined and report["findings_with_auc"] == len(defined)
    assert report["mean_auc"] == pytest.approx(np.mean(defined))
    low, high = report["mean_auc_ci"]
    assert 0 <= low <= high <= 1

    table = pd.read_csv(out / "predictions.csv")
    assert list(table["image_id"]) == list(films)
    np.testing.assert_allclose(table[[f"prob_{f}" for f in FINDINGS]].to_numpy(), predicted, atol=1e-5)
    assert captured.out.startswith(f"model: models:/chestxray@champion = version 1 (run {registry.run_id})\n")
    assert "mean AUC" in captured.out and "cxr: warning: quarantined: " in captured.err
    assert "cxr: warning: rejected row: " in captured.err and "not-here.png" in captured.err


def test_a_metadata_model_fills_missing_sex_and_view_from_the_dicom_header(
    metadata_model, nih_subset, tmp_path, capsys  # noqa: F811 - the imported fixture
):
    root = tmp_path / "hospital"
    root.mkdir()
    films = sorted((nih_subset / "images_001" / "images").glob("*.png"))[:3]
    dicom = write_dicom(root / "frontal.dcm", grey_of(films[0]), "MONOCHROME2", 8,
                        PatientSex="F", ViewPosition="AP", PatientAge="061Y")
    for film in films[1:]:
        shutil.copyfile(film, root / film.name)
    (root / "labels.csv").write_text(
        "path,labels,patient_id,age,sex,view\n"
        "frontal.dcm,Effusion,A,,,\n"                     # the header gives sex F, view AP, age 61
        f"{films[1].name},No Finding,B,70,M,PA\n"
        f"{films[2].name},Mass,C,33,F,\n"                 # no view, and a PNG has no header: quarantined
    )
    out = tmp_path / "external"
    assert cxr_main(["evaluate", str(root), "--labels", str(root / "labels.csv"), "--model", str(metadata_model),
                     "--out", str(out), "--bootstrap", "0"]) == 0
    capsys.readouterr()
    report = json.loads((out / "external.json").read_text())
    assert report["images"] == 2 and report["mean_auc_ci"] is None
    assert [(q["image_id"], q["reason"]) for q in report["quarantined"]] == [
        (films[2].name, "patient metadata: no view in the labels CSV or a DICOM header "
                        "(the model was trained with patient metadata)")]
    model = load_model(metadata_model)
    expected = model.predict(model.preprocess(dicom), {"age": 61, "sex": "F", "view": "AP"})
    table = pd.read_csv(out / "predictions.csv").set_index("image_id")
    np.testing.assert_allclose(table.loc["frontal.dcm", [f"prob_{f}" for f in FINDINGS]], expected, atol=1e-5)
