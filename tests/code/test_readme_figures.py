"""The README's figures are the committed default run's, not typed by hand.

`make run` rewrites metrics/*.json (committed, with dvc.lock); a README that
quotes other numbers fails here, so the two cannot drift apart."""
from __future__ import annotations

import json
import re

from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def committed(stage: str) -> dict:
    return json.loads((PROJECT_ROOT / "metrics" / f"{stage}.json").read_text())


def quoted(pattern: str) -> tuple[str, ...]:
    found = re.search(pattern, " ".join(README.split()))
    assert found, f"README no longer has a sentence matching {pattern!r}"
    return found.groups()


def test_mean_auc_and_its_interval():
    auc, low, high = quoted(r"mean ROC AUC of (\d\.\d\d) \(95% CI (\d\.\d\d)-(\d\.\d\d)\)")
    evaluate = committed("evaluate")
    assert (auc, low, high) == tuple(f"{evaluate[k]:.2f}" for k in ("mean_auc", "auc_ci_low", "auc_ci_high"))


def test_calibration_error():
    (ece,) = quoted(r"expected calibration error of (\d\.\d\d)")
    assert ece == f"{committed('evaluate')['mean_ece']:.2f}"


def test_pointing_game_against_a_random_map():
    game, chance = quoted(r"for (\d+)% of boxed findings against (\d+)% for a random map")
    explain = committed("explain")
    assert (game, chance) == (f"{100 * explain['pointing_game']:.0f}", f"{100 * explain['pointing_random']:.0f}")


def results_row(step: str) -> list[str]:
    """The cells of benchmarks/RESULTS.md's full-size rehearsal row that starts with `step`."""
    for line in (PROJECT_ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(step):
            return cells
    raise AssertionError(f"benchmarks/RESULTS.md has no full-size row starting {step!r}")


def seconds(cell: str) -> str:
    return f"{float(cell.replace(',', '')):,.0f}"


def test_full_size_rehearsal_figures_are_the_benchmark_s():
    first, second, ingest, validate, preprocess, peak, shards, noop = quoted(
        r"DVC hashes the root in ([\d,]+) s the first time and ([\d,]+) s after; ingest takes ([\d,]+) s, validate "
        r"([\d,]+) s and preprocess ([\d,]+) s, with a peak of ([\d,]+) MB for the whole process tree, and writes "
        r"(\d+\.\d\d) GB of TFRecords; a no-op `dvc status` then takes ([\d,]+) s")
    assert first == seconds(results_row("dvc status, first hash")[1])
    assert second == seconds(results_row("dvc status, second hash")[1])
    assert ingest == seconds(results_row("dvc repro --single-item ingest")[1])
    assert validate == seconds(results_row("dvc repro --single-item validate")[1])
    preprocess_row = results_row("dvc repro --single-item preprocess")
    assert (preprocess, peak) == (seconds(preprocess_row[1]), preprocess_row[3])
    assert noop == seconds(results_row("dvc status, no-op")[1])
    results = (PROJECT_ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert f"({shards} GB) in" in results, "the TFRecords size is not RESULTS.md's"
