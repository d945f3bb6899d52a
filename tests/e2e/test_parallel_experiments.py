"""The parallel-experiments recipe of docs/ci-and-scaling.md, run as written
(its commands are read from the doc: tests/e2e/test_documented_commands.py
counts them as run here): two experiments queued with `dvc exp run --queue -S ...`
(the second with an uncommitted change to the training code), run two at a
time by `dvc queue start -j 2` with MLFLOW_TRACKING_URI naming an absolute
SQLite store that does not exist yet. Each runs the code it was queued with; both register
into that one store (the first stage creates it under a lock); exactly one
version is champion and each decision names the champion it was compared with."""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from tests.e2e.project import (
    TINY,
    copy_project,
    dvc,
    experiment_revisions,
    pipeline_env,
    queue_env,
    queue_rows,
    run,
    run_queue,
)
from tests.e2e.test_documented_commands import documented_commands

pytestmark = pytest.mark.slow

NAME = "chestxray"
RECIPE_DOC = "docs/ci-and-scaling.md"
# Cheapest settings that still run every stage: one epoch, few resamples.
QUEUE_PARAMS = {**TINY, "train.epochs": 1, "evaluate.bootstrap": 50, "evaluate.promotion.resamples": 50}
CODE_MARKER = "train code as queued second"
CODE_CHANGE = f"\nimport sys as _sys\n\nprint({CODE_MARKER!r}, file=_sys.stderr)\n"


def recipe() -> dict:
    """The doc's recipe: the export of the store, the queued experiments, the queue's start."""
    commands = [c.text for c in documented_commands() if c.where.startswith(f"{RECIPE_DOC}:") and not c.illustrative]
    return {"export": next(c for c in commands if c.startswith("export MLFLOW_TRACKING_URI=")),
            "queue": [c for c in commands if c.startswith("dvc exp run --queue ")],
            "start": next(c for c in commands if c.startswith("dvc queue start")),
            "status": next(c for c in commands if c.startswith("dvc queue status"))}


def backbone_of(command: str) -> str:
    return re.search(r"train\.backbone=(\S+)", command).group(1)


def experiments_shown(project: Path, env: dict) -> dict[str, dict]:
    """Experiment name -> {"backbone", "mean_auc"} from `dvc exp show --json`."""
    return {name: {"backbone": data["params"]["params.yaml"]["data"]["train"]["backbone"],
                   "mean_auc": data["metrics"]["metrics/evaluate.json"]["data"]["mean_auc"]}
            for name, data in experiment_revisions(project, env).items()}


@pytest.fixture(scope="module")
def queued(tmp_path_factory, prepared_tiny):
    """The recipe run once: a project whose data stages ran and were committed
    (a copy of the prepared one: the queued experiments check the phantom and
    shards out of its cache instead of each generating them again), two
    experiments queued, the queue started with the store set, and waited for."""
    root = tmp_path_factory.mktemp("parallel")
    project = copy_project(prepared_tiny, root / "project", QUEUE_PARAMS)
    steps = recipe()
    # the doc's example store, /srv/chestxray/..., here under the test's tmp
    store = steps["export"].split("=", 1)[1].replace("/srv/chestxray", str(root / "srv"))
    database = Path(store.removeprefix("sqlite:///"))
    assert store.startswith("sqlite:////") and not database.exists()
    env = queue_env(store)
    started = time.monotonic()
    # Queued without the store: the workers take their environment from `dvc queue start`.
    # The second is queued with a change to the training code that is not
    # committed (the queue takes the workspace as it is), then undone: its run
    # must use it and the first's must not.
    train_module = project / "pipeline" / "model" / "train.py"
    first, second = steps["queue"]
    for command in (first, second):
        if command == second:
            train_module.write_text(train_module.read_text() + CODE_CHANGE)
        dvc(shlex.split(command)[1:], project, pipeline_env())
        run(["git", "checkout", "--", str(train_module.relative_to(project))], project)
    rows = run_queue(project, env, 2, start=shlex.split(steps["start"])[1:])
    elapsed = time.monotonic() - started
    logs = {name: dvc(["queue", "logs", name], project, env) for name in rows}
    return {"project": project, "env": env, "store": store, "database": database, "rows": rows, "logs": logs,
            "elapsed_s": elapsed, "backbones": [backbone_of(first), backbone_of(second)],
            "status": dvc(shlex.split(steps["status"])[1:], project, env)}


def test_both_queued_experiments_succeed(queued):
    rows, logs = queued["rows"], queued["logs"]
    assert set(rows.values()) == {"Success"}, f"{rows}\n" + "\n".join(
        f"--- {n}\n{text}" for n, text in logs.items() if rows[n] != "Success")
    shown = experiments_shown(queued["project"], queued["env"])
    assert set(shown) == set(rows)
    assert sorted(e["backbone"] for e in shown.values()) == sorted(queued["backbones"])
    assert set(queue_rows(queued["status"]).values()) == {"Success"}  # the doc's "until every task reads Success"
    assert all(0.0 <= e["mean_auc"] <= 1.0 for e in shown.values()), shown
    print(f"two queued experiments ran in {queued['elapsed_s']:.0f}s")


def test_each_experiment_runs_the_code_it_was_queued_with(queued):
    """The queue runs each experiment in a temporary copy of the repo; the stage
    scripts there import that copy's pipeline package (src/pipeline), not the
    one the virtualenv's editable install points at."""
    shown = experiments_shown(queued["project"], queued["env"])
    backbone_of_run = {name: shown[name]["backbone"] for name in shown}
    for name, text in queued["logs"].items():
        expected = backbone_of_run[name] == queued["backbones"][1]
        assert (CODE_MARKER in text) == expected, f"{name} ({backbone_of_run[name]}):\n{text[-3000:]}"
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
        backbones = {client.get_run(v.run_id).data.params["train.backbone"] for v in versions}
    assert backbones == set(queued["backbones"]), "both versions should come from the two experiments' own runs"
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
