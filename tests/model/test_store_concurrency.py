"""Two evaluations registering at once: on a fresh SQLite store (created by both
at the same moment) and on a real `mlflow server`, both versions land, exactly
one holds the champion alias, and every version's decision names the champion
it was compared with. Real processes, real MLflow, a real tiny Keras model."""
from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, project_settings

pytestmark = pytest.mark.slow

NAME = "chestxray"
EXPERIMENT = "concurrency"
# Fresh-store rounds: each costs ~12 s of schema creation plus two registrations
# on this 2-core machine; the issue asked for 10.
ROUNDS = int(os.environ.get("STORE_CONCURRENCY_ROUNDS", "10"))
WORKER_TIMEOUT_S = 900


def decide_by_mean_auc(uri: str, score: float) -> dict:
    """A real decision on the registry's state: promote when there is no champion
    or when this model's mean AUC beats the champion's (read from its tags)."""
    import mlflow

    from pipeline.model.registry import champion_version

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = champion_version(client, NAME)
    if champion is None:
        return {"promote": True, "rule": "first version", "reasons": ["no champion"], "champion_version": None,
                "comparison": None}
    champion_score = float(client.get_model_version(NAME, str(champion)).tags["mean_auc"])
    promote = score > champion_score
    return {"promote": promote, "rule": "higher mean AUC" if promote else "refused: lower mean AUC",
            "reasons": [f"{score:.3f} vs champion {champion_score:.3f}"], "champion_version": champion,
            "comparison": None}


def register_rounds(worker: int, uris: list[str], folders: list[str], barrier, results) -> None:
    """One worker process: for each round, wait for the other worker, then
    configure MLflow on the round's store and register a version."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from pipeline.core.labels import FINDINGS
    from pipeline.core.tracking import configure_mlflow
    from pipeline.model.architectures import build_model
    from pipeline.model.registry import register_decided, registry_model_metadata

    model = build_model("small_cnn", 32, "none")
    for round_number, (uri, folder) in enumerate(zip(uris, folders)):
        score = 0.70 + 0.01 * ((round_number + worker) % 3) + 0.001 * worker
        metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": 32, "fit": "crop"},
                                           {"mean_auc": score, "auc": {}}, "manifest")
        os.chdir(folder)  # MLflow's default artifact root is relative to the working directory
        os.environ["MLFLOW_TRACKING_URI"] = uri
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        try:
            mlflow = configure_mlflow(EXPERIMENT)
            with mlflow.start_run():
                record = register_decided(mlflow, model, NAME, metadata, {"worker": str(worker)},
                                          lambda uri=uri, score=score: decide_by_mean_auc(uri, score))
            results.put((round_number, worker, record["version"], None))
        except Exception as exc:  # reported to the test, which fails with it
            results.put((round_number, worker, None, f"{type(exc).__name__}: {exc}"))


def run_workers(uris: list[str], folders: list[str]) -> dict[int, list]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=register_rounds, args=(worker, uris, folders, barrier, results))
               for worker in (0, 1)]
    # Spawned workers get this process's sys.path. A pyfunc model loaded by an
    # earlier test (MLflow's code_paths) put its copy of a few pipeline modules
    # in front, without pipeline.core.tracking: the project goes first.
    saved_path = list(sys.path)
    sys.path[:] = [str(PROJECT_ROOT), *(entry for entry in saved_path if entry != str(PROJECT_ROOT))]
    try:
        for process in workers:
            process.start()
    finally:
        sys.path[:] = saved_path
    outcomes: dict[int, list] = {}
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        while sum(len(o) for o in outcomes.values()) < 2 * len(uris):
            try:
                round_number, worker, version, error = results.get(timeout=5)
            except queue.Empty:
                dead = [(w, p.exitcode) for w, p in enumerate(workers) if p.exitcode not in (None, 0)]
                assert not dead, f"worker(s) died before reporting every round (worker, exit code): {dead}"
                assert time.monotonic() < deadline, f"no result within {WORKER_TIMEOUT_S} s"
                continue
            outcomes.setdefault(round_number, []).append((worker, version, error))
    finally:
        for process in workers:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return outcomes


def check_round(uri: str, outcome: list) -> None:
    import mlflow

    errors = [error for _, _, error in outcome if error]
    assert not errors, errors
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{NAME}'")}
    assert sorted(versions) == [1, 2] and sorted(v for _, v, _ in outcome) == [1, 2]
    aliases = client.get_registered_model(NAME).aliases
    champion = int(aliases["champion"])
    scores = {number: float(v.tags["mean_auc"]) for number, v in versions.items()}
    assert scores[champion] == max(scores.values()), (scores, aliases)
    compared = {number: v.tags["compared_with_champion_version"] for number, v in versions.items()}
    # the first to decide saw no champion; the second was compared with the first
    first = next(number for number, seen in compared.items() if seen == "none")
    second = 3 - first
    assert compared[second] == str(first), compared
    decisions = {number: v.tags["decided_at_registration"] for number, v in versions.items()}
    assert decisions[first] == "champion"
    assert decisions[second] == ("champion" if champion == second else "challenger"), (decisions, aliases)
    now = {number: v.tags["champion_decision"] for number, v in versions.items()}
    assert [number for number, held in now.items() if held == "champion"] == [champion], (now, aliases)
    assert all("incomplete" not in v.tags for v in versions.values())
    # the store still works: a third client call that writes
    client.set_registered_model_tag(NAME, "checked", "yes")


def test_parallel_registrations_on_fresh_sqlite_stores_keep_one_champion(tmp_path):
    folders = [tmp_path / f"round{number}" for number in range(ROUNDS)]
    for folder in folders:
        folder.mkdir()
    uris = [f"sqlite:///{folder / 'mlflow.db'}" for folder in folders]
    started = time.monotonic()
    outcomes = run_workers(uris, [str(folder) for folder in folders])
    elapsed = time.monotonic() - started
    print(f"{ROUNDS} rounds in {elapsed:.0f}s", file=sys.stderr)
    assert sorted(outcomes) == list(range(ROUNDS))
    for number, uri in enumerate(uris):
        check_round(uri, outcomes[number])
        assert Path(folders[number] / "mlflow.db.lock").exists()


def test_parallel_registrations_on_a_server_keep_one_champion(tmp_path):
    from tests.e2e.test_mlflow_server import start_server, stop

    url, server = start_server(tmp_path / "server")
    try:
        folder = tmp_path / "client"
        folder.mkdir()
        outcomes = run_workers([url], [str(folder)])
        check_round(url, outcomes[0])
    finally:
        stop(server)



@pytest.fixture
def shards(small_nih_root, tmp_path):
    """12 small real PNGs at 32 px, in train, val and test shards."""
    import json

    from pipeline.records.preprocess import write_tfrecord_shards
    from tests.conftest import build_manifest

    manifest, _ = build_manifest(small_nih_root, {"method": "random", "train": 0.4, "val": 0.3, "test": 0.3}, seed=1)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=100)
    (out / "index.json").write_text(json.dumps(index))
    return out


def test_the_evaluate_stage_decides_and_registers_under_the_store_lock(shards, tmp_path, monkeypatch):
    """evaluate_model itself, twice on one SQLite store: the second version is
    compared with the first, under the store's locks."""
    import mlflow

    from pipeline.model.architectures import build_model
    from pipeline.model.evaluate import evaluate_model

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    model_file = tmp_path / "model.keras"
    build_model("small_cnn", 32, "none").save(model_file)
    chosen = project_settings(**{
        "evaluate.threshold_method": "youden", "evaluate.bootstrap": 20, "evaluate.min_slice_positives": 1,
        "evaluate.min_slice_patients": 1, "evaluate.calibration": "none", "evaluate.batch_size": 4,
        "evaluate.promotion.resamples": 20, "mlflow.experiment": EXPERIMENT, "mlflow.registered_model": NAME,
        "mlflow.timeout_s": 5})
    settings, mlflow_settings = chosen.evaluate, chosen.mlflow
    training = {"backbone": "small_cnn", "image_size": 32, "fit": "crop", "params": {"seed": 0}}
    versions = []
    try:
        for attempt in range(2):
            metrics = evaluate_model(model_file, shards, tmp_path / f"reports{attempt}", tmp_path / f"plots{attempt}",
                                     tmp_path / "no_run.json",
                                     settings, mlflow_settings, training, seed=0)
            versions.append(metrics["registry"]["version"])
    finally:
        mlflow.set_tracking_uri(None)  # configure_mlflow set it process-wide
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    second = client.get_model_version(NAME, str(versions[1]))
    assert versions == [1, 2] and second.tags["compared_with_champion_version"] == "1"
    assert client.get_registered_model(NAME).aliases["champion"] in (1, 2)
    assert (tmp_path / "mlflow.db.registry.lock").exists() and (tmp_path / "mlflow.db.lock").exists()
