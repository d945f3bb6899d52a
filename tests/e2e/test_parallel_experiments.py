"""The parallel-experiments recipe of docs/ci-and-scaling.md, run as written: two
experiments queued with `dvc exp run --queue -S ...` (the second with an
uncommitted change to the training code), run two at a time by
`dvc queue start -j 2` with MLFLOW_TRACKING_URI naming an absolute SQLite store
that does not exist yet. Each runs the code it was queued with; both register
into that one store (the first stage creates it under a lock); exactly one
version is champion and each decision names the champion it was compared with."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_pipeline import TINY, make_project, pipeline_env, run

pytestmark = pytest.mark.slow

NAME = "chestxray"
LEARNING_RATES = ("0.002", "0.0005")
# Cheapest settings that still run every stage: one epoch, few resamples.
QUEUE_PARAMS = {**TINY, "train.epochs": 1, "evaluate.bootstrap": 50, "evaluate.promotion.resamples": 50}
# Two tiny pipelines side by side take 2.5-3 minutes on a 2-core machine; the
# bound leaves room for a loaded one.
QUEUE_TIMEOUT_S = 1500
POLL_S = 5
UNFINISHED = ("Queued", "Running")
CHANGED_CODE_RATE = LEARNING_RATES[1]
CODE_MARKER = f"train code as queued with learning rate {CHANGED_CODE_RATE}"
CODE_CHANGE = f"\nimport sys as _sys\n\nprint({CODE_MARKER!r}, file=_sys.stderr)\n"


def queue_env(store: str) -> dict:
    """The environment the recipe starts the queue in: the test's own, plus the store
    and a git identity for the experiments' commits (a CI runner may have none)."""
    env = pipeline_env()
    env["MLFLOW_TRACKING_URI"] = store
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "t")
        env.setdefault(f"GIT_{role}_EMAIL", "t@t")
    return env


def dvc(arguments: list[str], project: Path, env: dict) -> str:
    result = subprocess.run(["dvc", *arguments], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(arguments)} failed ({result.returncode}):\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result.stdout


def queue_rows(status: str) -> dict[str, str]:
    """Experiment name -> state from `dvc queue status`'s table (Task, Name, Created, Status)."""
    rows = {}
    for line in status.splitlines():
        match = re.match(r"^\s*[0-9a-f]{7,}\s+(\S+)\s+.*?\b(Queued|Running|Success|Failed)\b", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def wait_for_queue(project: Path, env: dict, expected: int) -> dict[str, str]:
    """Poll `dvc queue status` until `expected` tasks are done, at most QUEUE_TIMEOUT_S."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = dvc(["queue", "status"], project, env)
        rows = queue_rows(status)
        if len(rows) == expected and not set(rows.values()) & set(UNFINISHED):
            return rows
        if time.monotonic() >= deadline:
            running = [name for name, state in rows.items() if state == "Running"]
            if running:
                dvc(["queue", "kill", *running], project, env)
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S}s:\n{status}")
        time.sleep(POLL_S)


def experiments_shown(project: Path, env: dict) -> dict[str, dict]:
    """Experiment name -> {"learning_rate", "mean_auc"} from `dvc exp show --json`."""
    shown = json.loads(dvc(["exp", "show", "--json"], project, env))
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                params = data["params"]["params.yaml"]["data"]
                metrics = data["metrics"]["metrics/evaluate.json"]["data"]
                found[revision["name"]] = {"learning_rate": str(params["train"]["learning_rate"]),
                                           "mean_auc": metrics["mean_auc"]}
    return found


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """The recipe run once: a project whose data stages ran and were committed, two
    experiments queued, the queue started with the store set, and waited for."""
    root = tmp_path_factory.mktemp("parallel")
    project = make_project(root / "project", QUEUE_PARAMS)
    # The data stages once, as in a project that ran its pipeline: the queued
    # experiments check their outputs out of the shared cache instead of each
    # generating the phantom again.
    run(["dvc", "repro", "preprocess"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data"], project)
    database = root / "store" / "mlflow.db"
    assert not database.exists()
    store = f"sqlite:///{database}"  # database is absolute: sqlite:////...
    env = queue_env(store)
    started = time.monotonic()
    # Queued without the store: the workers take their environment from `dvc queue start`.
    # The second is queued with a change to the training code that is not
    # committed (the queue takes the workspace as it is), then undone: its run
    # must use it and the first's must not.
    train_module = project / "pipeline" / "model" / "train.py"
    for rate in LEARNING_RATES:
        if rate == CHANGED_CODE_RATE:
            train_module.write_text(train_module.read_text() + CODE_CHANGE)
        dvc(["exp", "run", "--queue", "-S", f"train.learning_rate={rate}"], project, pipeline_env())
        run(["git", "checkout", "--", str(train_module.relative_to(project))], project)
    try:
        dvc(["queue", "start", "-j", "2"], project, env)
        rows = wait_for_queue(project, env, len(LEARNING_RATES))
    finally:
        dvc(["queue", "stop"], project, env)
    elapsed = time.monotonic() - started
    logs = {name: dvc(["queue", "logs", name], project, env) for name in rows}
    return {"project": project, "env": env, "store": store, "database": database, "rows": rows, "logs": logs,
            "elapsed_s": elapsed}


def test_both_queued_experiments_succeed(queued):
    rows, logs = queued["rows"], queued["logs"]
    assert set(rows.values()) == {"Success"}, f"{rows}\n" + "\n".join(
        f"--- {n}\n{text}" for n, text in logs.items() if rows[n] != "Success")
    shown = experiments_shown(queued["project"], queued["env"])
    assert set(shown) == set(rows)
    assert sorted(e["learning_rate"] for e in shown.values()) == sorted(LEARNING_RATES)
    assert all(0.0 <= e["mean_auc"] <= 1.0 for e in shown.values()), shown
    print(f"two queued experiments ran in {queued['elapsed_s']:.0f}s")


def test_each_experiment_runs_the_code_it_was_queued_with(queued):
    """The queue runs each experiment in a temporary copy of the repo; the stage
    scripts there import that copy's pipeline package (src/pipeline), not the
    one the virtualenv's editable install points at."""
    shown = experiments_shown(queued["project"], queued["env"])
    rate_of = {name: shown[name]["learning_rate"] for name in shown}
    for name, text in queued["logs"].items():
        expected = rate_of[name] == CHANGED_CODE_RATE
        assert (CODE_MARKER in text) == expected, f"{name} (learning rate {rate_of[name]}):\n{text[-3000:]}"
    assert CODE_MARKER not in (queued["project"] / "pipeline" / "model" / "train.py").read_text()


def test_one_store_two_versions_one_champion(queued):
    from tests.conftest import mlflow_store

    with mlflow_store(queued["store"]) as mlflow:
        client = mlflow.MlflowClient()
        assert [m.name for m in client.search_registered_models()] == [NAME]  # no decision lease left behind
        versions = sorted(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))
        assert [int(v.version) for v in versions] == [1, 2]
        first, second = versions
        aliases = {alias: str(version) for alias, version in client.get_registered_model(NAME).aliases.items()}
        rates = {client.get_run(v.run_id).data.params["train.learning_rate"] for v in versions}
    assert rates == set(LEARNING_RATES), "both versions should come from the two experiments' own runs"
    assert aliases["challenger"] == "2"
    # The first found no champion; the second was compared with the first and
    # kept or took the alias, and its tag says which.
    assert first.tags["compared_with_champion_version"] == "none"
    assert first.tags["decided_at_registration"] == "champion"
    assert second.tags["compared_with_champion_version"] == "1"
    assert second.tags["champion_decision"] in ("champion", "challenger")
    assert aliases["champion"] == ("2" if second.tags["champion_decision"] == "champion" else "1")
    # what holds now: one champion, the first retired if the second took the alias
    assert first.tags["champion_decision"] == ("former champion" if aliases["champion"] == "2" else "champion")
    assert not any("incomplete" in v.tags for v in versions)
    database = queued["database"]
    assert database.with_name("mlflow.db.lock").exists() and database.with_name("mlflow.db.registry.lock").exists()


def test_store_reads_and_writes_afterwards(queued):
    from tests.conftest import mlflow_store

    with mlflow_store(queued["store"]) as mlflow:
        client = mlflow.MlflowClient()
        champion = client.get_model_version_by_alias(NAME, "champion")
        client.set_model_version_tag(NAME, champion.version, "checked_by", "test_parallel_experiments")
        experiment = client.get_experiment_by_name("chestxray")
        third = client.create_run(experiment.experiment_id)
        client.log_metric(third.info.run_id, "after_queue", 1.0)
        client.set_terminated(third.info.run_id)
        assert client.get_run(third.info.run_id).data.metrics == {"after_queue": 1.0}
        assert client.get_model_version(NAME, champion.version).tags["checked_by"] == "test_parallel_experiments"
        runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3


def test_registered_models_outlive_the_temp_copies(queued, tmp_path):
    """DVC deletes the queue's temp copies; each version's model must still download from the store."""
    from tests.conftest import mlflow_store

    with mlflow_store(queued["store"]) as mlflow:
        for version in ("1", "2"):
            folder = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(tmp_path / version))
            model = Path(folder)
            assert (model / "MLmodel").is_file(), f"version {version}: no MLmodel in {model}"
