"""The drift monitor with a model trained on the phantom (tests/model/phantom_model.py):
  - second-site films mixed into batches at 0, 10, 25, 50 and 100%: the drift
    score rises with the share, a 25% share is found, clean batches rarely alarm
    (the benchmark's smaller version: benchmarks/bench_drift_monitor.py);
  - `cxr monitor` on 100 real NIH films (../shared) reports drift and names
    what moved, and on 100 phantom films the reference never saw reports none;
  - its page renders in headless Chromium.
The phantom films are 1024 px, as NIH's are, so that the file's size is no giveaway."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.monitor.profile import profile_films
from pipeline.monitor.reference import build_reference, read_reference, write_reference
from pipeline.monitor.trials import run_trials, trial_summary
from pipeline.phantom.generate import SecondSite, generate_phantom
from pipeline.phantom.render import SiteLook
from pipeline.serve.cli import main as cxr_main
from pipeline.serve.monitor_command import patient_lookup
from tests.conftest import NIH_SUBSET, require_shared
from tests.model.phantom_model import train_phantom_model

pytestmark = pytest.mark.slow

FILM_SIZE = 1024
SECOND_SITE = SiteLook(exposure=1.3, noise=2.5, collimation=0.06, marker=True)  # params.yaml's second_site
# (phantom seed, films, second-site share); seeds unlike phantom_model's 1 (train) and 2 (its tests)
POOLS = {"reference": (21, 150, 0.0), "clean": (22, 300, 0.0), "second_site": (23, 100, 1.0),
         "unseen": (24, 100, 0.0)}
SHARES = [0.0, 0.1, 0.25, 0.5, 1.0]
SEEDS = list(range(5))
BATCH = 100
NULL_BATCHES = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("monitor")


@pytest.fixture(scope="module")
def model(workdir):
    trained, _ = train_phantom_model(workdir / "train", seed=0)
    return trained


@pytest.fixture(scope="module")
def roots(workdir) -> dict[str, Path]:
    roots = {}
    for name, (seed, films, share) in POOLS.items():
        roots[name] = workdir / name
        generate_phantom(roots[name], films, seed, image_size=FILM_SIZE, workers=2, progress=False,
                         second_site=SecondSite(share, SECOND_SITE) if share else SecondSite())
    return roots


def profiled(model, root: Path):
    films = sorted((root / "images").glob("*.png"))
    # what `cxr monitor --metadata` does: age, sex, view and the patient from NIH's CSV
    profiles = profile_films(model, films, patient_lookup(root / "Data_Entry_2017.csv", films), batch_size=32)
    assert not profiles.failed and len(profiles.names) == len(films)
    assert None not in profiles.patients and len(set(profiles.patients)) < len(films)  # follow-up films
    return profiles


@pytest.fixture(scope="module")
def reference_file(model, roots, workdir) -> Path:
    reference = build_reference(profiled(model, roots["reference"]), list(FINDINGS),
                                {"split": "test", "data_source": "phantom"})
    path = workdir / "reference_profile.json"
    write_reference(reference, path)
    return path


def test_drift_score_rises_with_the_second_site_share(model, roots, reference_file):
    reference = read_reference(reference_file)
    clean, shifted = profiled(model, roots["clean"]), profiled(model, roots["second_site"])
    mixes = trial_summary(run_trials(reference, clean, shifted, list(FINDINGS), SHARES, SEEDS, BATCH, 500))
    null = trial_summary(run_trials(reference, clean, shifted, list(FINDINGS), [0.0],
                                    list(range(100, 100 + NULL_BATCHES)), BATCH, 500))
    print(json.dumps({"mixes": mixes, "null": null["per_share"]}, indent=1))
    assert mixes["spearman_mean"] >= 0.9, mixes
    assert mixes["per_share"][0.25]["detection"] >= 0.8, mixes["per_share"]
    assert null["per_share"][0.0]["batches"] == NULL_BATCHES
    assert null["per_share"][0.0]["detection"] <= 0.05, null["per_share"]
    scores = [mixes["per_share"][share]["mean_score"] for share in SHARES]
    assert scores == sorted(scores), scores


def run_monitor(model_file: Path, reference_file: Path, films: list[str], metadata: Path, out: Path,
                capsys) -> tuple[int, dict, str]:
    code = cxr_main(["monitor", *films, "--model", str(model_file), "--reference", str(reference_file),
                     "--metadata", str(metadata), "--out", str(out), "--permutations", "500"])
    printed = capsys.readouterr().out
    return code, json.loads((out / "monitor.json").read_text()), printed


@pytest.fixture(scope="module")
def nih_report(workdir, model, reference_file):
    require_shared(NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz", "real NIH subset")
    films = sorted(str(p) for p in (NIH_SUBSET / "images_001" / "images").glob("*.png"))[:100]
    assert len(films) == 100
    return films


def test_cxr_monitor_finds_real_nih_films_drifted_and_unseen_phantom_films_not(
        workdir, model, roots, reference_file, nih_report, capsys):
    model_file = workdir / "train" / "model.keras"
    code, report, printed = run_monitor(model_file, reference_file, nih_report,
                                        NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz", workdir / "nih", capsys)
    assert code == 1, printed
    assert report["verdict"] == "drift" and report["films"]["profiled"] == 100
    assert report["moved_most"], report["features"][:5]
    assert printed.startswith("drift: drift score ") and "moved most: " in printed
    flagged = {f["group"] for f in report["features"] if f["flagged"]}
    assert "image" in flagged or "embedding" in flagged, flagged
    assert set(report["probability_shift"]) == set(FINDINGS)

    unseen = sorted(str(p) for p in (roots["unseen"] / "images").glob("*.png"))
    code, report, printed = run_monitor(model_file, reference_file, unseen, roots["unseen"] / "Data_Entry_2017.csv",
                                        workdir / "unseen", capsys)
    assert code == 0, printed
    assert report["verdict"] == "no drift" and not any(f["flagged"] for f in report["features"]), report
    assert report["drift_score_p"] > 0.025 and printed.startswith("no drift: drift score ")
    tested = {f["name"] for f in report["features"] if f["z"] is not None}
    assert {"grey_mean", "noise", "age", "sex", "p_Mass", "embedding"} <= tested, tested
    untested = {f["name"]: f["not_tested"] for f in report["features"] if f["z"] is None}
    assert untested["width"] == "one value only (1024)", untested


def test_monitor_refuses_too_few_films_and_a_model_without_reference(workdir, model, roots, reference_file,
                                                                    capsys):
    model_file = workdir / "train" / "model.keras"
    few = sorted(str(p) for p in (roots["unseen"] / "images").glob("*.png"))[:5]
    code = cxr_main(["monitor", *few, "--model", str(model_file), "--reference", str(reference_file),
                     "--out", str(workdir / "few")])
    err = capsys.readouterr().err
    assert code == 2 and "5 of 5 films could be profiled; a verdict needs at least 20" in err, err
    assert not (workdir / "few" / "monitor.json").exists()
    code = cxr_main(["monitor", *few, "--model", str(model_file), "--out", str(workdir / "few")])
    err = capsys.readouterr().err
    assert code == 2 and "has no reference profile" in err and "--reference" in err, err
    from pipeline.monitor.trials import subset

    small = workdir / "small_reference.json"
    write_reference(build_reference(subset(profiled(model, roots["reference"]), range(6)), list(FINDINGS),
                                    {"split": "test"}), small)
    unseen = sorted(str(p) for p in (roots["unseen"] / "images").glob("*.png"))
    code = cxr_main(["monitor", *unseen, "--model", str(model_file), "--reference", str(small),
                     "--out", str(workdir / "few")])
    err = capsys.readouterr().err
    assert code == 2 and "the reference profile holds 6 test films; a verdict needs at least 10" in err, err
    broken = workdir / "broken_reference.json"
    broken.write_text(json.dumps({"format_version": 1, "films": 150}))
    code = cxr_main(["monitor", *unseen, "--model", str(model_file), "--reference", str(broken),
                     "--out", str(workdir / "few")])
    err = capsys.readouterr().err
    assert code == 2 and (f"cxr: error: {broken}: the reference profile lacks patients, features, probabilities, "
                          "embedding") in err.splitlines(), err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no `chromium` binary on PATH (Debian package chromium)")
def test_monitor_page_renders_offline_in_chromium(workdir, nih_report, tmp_path):
    page = workdir / "nih" / "index.html"
    if not page.exists():
        pytest.skip("the NIH monitor run did not write its page (see the test before)")
    text = page.read_text()
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched: it works offline
    result = subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    dom = result.stdout
    assert 'class="verdict drift"' in dom and 'id="synthetic"' in dom and dom.count("<svg") == 2
    assert dom.count('fill="#c0392b"') >= 1  # a flagged feature's bar
    assert all(f in dom for f in FINDINGS)


def test_reference_pixels_are_the_served_films(model, roots):
    """Profiling reads a film as the model server and `cxr predict` do."""
    from pipeline.monitor.profile import model_pixels
    from pipeline.serve.films import film_from_bytes

    film = sorted((roots["unseen"] / "images").glob("*.png"))[0]
    data = film.read_bytes()
    pixels, _ = model_pixels(data, film.name, model)
    np.testing.assert_array_equal(pixels, film_from_bytes(data, film.name, model.image_size, model.fit).pixels)
