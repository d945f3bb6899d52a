"""`python -m pipeline.model.retrain` (make retrain) on a project whose data set the
user tracks with `dvc add`, with a local DVC remote: it reruns only on a change,
and a clone + `dvc pull` restores every output byte for byte."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.labels import FINDINGS
from tests.conftest import make_nih_root
from tests.e2e.project import TINY, make_project, run

pytestmark = pytest.mark.slow

FIRST_PATIENTS = range(1, 41)
NEW_PATIENTS = range(41, 51)


def nih_rows(patients: range) -> list[tuple]:
    """Two films per patient, findings cycling through all 14, some healthy, so
    every split holds positives of most findings."""
    rows = []
    for patient in patients:
        finding = FINDINGS[patient % len(FINDINGS)]
        labels = "No Finding" if patient % 5 == 0 else f"{finding}|{FINDINGS[(patient * 3) % len(FINDINGS)]}"
        for follow_up in range(2):
            rows.append((f"{patient:08d}_{follow_up:03d}.png", labels, follow_up, patient,
                         20 + patient, "MF"[patient % 2], ("PA", "AP")[follow_up]))
    return rows


def add_images(root: Path, patients: range, scratch: Path) -> None:
    """The user downloads more images: new PNGs and their rows in the CSV."""
    csv = root / "Data_Entry_2017.csv"
    existing = csv.read_text()
    scratch = make_nih_root(scratch, nih_rows(patients))
    for image in (scratch / "images").glob("*.png"):
        image.rename(root / "images" / image.name)
    new_rows = (scratch / "Data_Entry_2017.csv").read_text().splitlines()[1:]
    csv.write_text(existing + "\n".join(new_rows) + "\n")


def retrain(project: Path):
    return run([sys.executable, "-m", "pipeline.model.retrain"], project, check=False)


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)


def registry_versions(project: Path) -> list:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return client.search_model_versions("name = 'chestxray'")


def tracked_outputs(project: Path) -> list[str]:
    """Every output DVC tracks: the stages' outs in dvc.lock and the .dvc files' outs."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    paths = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    for dvc_file in project.glob("data/*.dvc"):
        paths += [dvc_file.parent.relative_to(project).as_posix() + "/" + out["path"]
                  for out in yaml.safe_load(dvc_file.read_text())["outs"]]
    return paths


def file_hashes(root: Path, paths: list[str]) -> dict[str, str]:
    hashes = {}
    for path in paths:
        target = root / path
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            hashes[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project whose data set is data/nih, tracked by `dvc add`, pushed to a local remote."""
    base = tmp_path_factory.mktemp("retrain")
    project = make_project(base / "project", {**TINY, "ingest.source": "nih", "ingest.root": "data/nih"})
    make_nih_root(project / "data" / "nih", nih_rows(FIRST_PATIENTS))
    run(["dvc", "add", "data/nih"], project)
    run(["dvc", "remote", "add", "-d", "local", str(base / "remote")], project)
    commit(project, "data")
    return project


def assert_pull_request_body(project: Path, printed: str) -> None:
    """The body names the images the grown download added, the prevalence
    before and after, the added films' verdict against champion version 1
    (checked before version 2 was registered) and version 2's decision with its paired CI."""
    body = (project / "reports" / "retrain" / "pull_request.md").read_text()
    change = json.loads((project / "reports" / "ingest.json").read_text())["data_change"]
    added = sorted(image for ids in change["added"].values() for image in ids)
    assert len(added) == 2 * len(NEW_PATIENTS) == change["totals"]["images_added"]
    assert f"- since the last ingest: {len(added)} images added, 0 removed ({len(NEW_PATIENTS)} patients added" in body
    assert all(f"`{image}`" in body for image in added)  # 20: every one named
    for finding in FINDINGS:
        before, after = change["before"]["prevalence"][finding], change["after"]["prevalence"][finding]
        assert f"| {finding} prevalence | {before:.1%} | {after:.1%} |" in body
    monitor = json.loads((project / "reports" / "retrain" / "monitor" / "monitor.json").read_text())
    assert monitor["model"]["version"] == "1" and monitor["films"]["given"] == len(added)
    assert f"**{monitor['verdict']}: drift score " in body and "version 1" in body
    assert "retrain: the added films against the champion: " in printed
    evaluation = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    registry = evaluation["registry"]
    assert f"chestxray version {registry['version']} registered as " in body and registry["version"] == 2
    low, high = registry["comparison"]["mean_auc_diff_ci"]
    assert f"paired 95% CI [{low:+.4f}, {high:+.4f}]" in body


def test_retrain_runs_only_on_change_and_a_clone_pulls_the_same_bytes(project, tmp_path):
    first = retrain(project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "retrain: ingest: " in first.stdout and "Running stage 'explain'" in first.stdout + first.stderr
    assert [str(v.version) for v in registry_versions(project)] == ["1"]
    commit(project, "first model")

    unchanged = retrain(project)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert unchanged.stdout.strip() == "retrain: data, params and code unchanged; nothing to do"
    assert "Running stage" not in unchanged.stdout + unchanged.stderr

    add_images(project / "data" / "nih", NEW_PATIENTS, tmp_path / "more")
    run(["dvc", "add", "data/nih"], project)
    more = retrain(project)
    output = more.stdout + more.stderr
    assert more.returncode == 0, output
    assert "retrain: ingest: changed deps: data/nih (modified)" in more.stdout
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "explain"):
        assert f"Running stage '{stage}'" in output
    assert sorted(str(v.version) for v in registry_versions(project)) == ["1", "2"]
    assert_pull_request_body(project, more.stdout)
    commit(project, "more data, second model")

    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    outputs = tracked_outputs(project)
    assert {"data/nih", "models/model.keras", "data/tfrecords"} <= set(outputs)
    original = file_hashes(project, outputs)
    assert len(original) > 100 and file_hashes(clone, outputs) == original
    assert "nothing to do" in retrain(clone).stdout
