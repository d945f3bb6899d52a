"""The MLflow model registry: every evaluated model becomes a version of mlflow.registered_model (`chestxray`).

Each new version gets the alias `challenger`; it takes `champion` when the
evaluate stage's decision (pipeline.model.selection: the champion re-scored on
the same test images, a paired comparison) promotes it. A person can move the
champion by hand, which is tagged with who and why:

    python -m pipeline.model.registry promote 3 --reason "reviewed by radiology"

Every move of an alias is recorded (pipeline.model.alias_history), and read with

    python -m pipeline.model.registry history [--at "2026-12-04 10:30"] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path

import keras

from pipeline.core.faults import first_line
from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import KERAS_ARTIFACT, REGISTRATION_FILE
from pipeline.core.quiet import mlflow_event_lines_off
from pipeline.core.store_lock import DEFAULT_LOCK_TIMEOUT_S, registry_lock, sqlite_path
from pipeline.model.alias_history import HOW_AUTOMATIC, HOW_MANUAL, AliasMove, now_ms, record_move
from pipeline.model.promotion import (
    CHALLENGER,
    CHAMPION,
    COMPARED_TAG,
    DECISION_TAG,
    REASONS_TAG,
    RULE_TAG,
    decision_tags,
)
from pipeline.model.version_notes import (
    changes_from_champion,
    score_tags,
    version_description,
    with_status,
)

# DECISION_TAG holds what holds now: CHAMPION, CHALLENGER or FORMER_CHAMPION (rewritten when
# the alias moves); DECIDED_TAG keeps what was decided at registration (pipeline.model.promotion).
FORMER_CHAMPION = "former champion"
CHAMPION_UNTIL_TAG = "champion_until"
MANUAL_RULE = "manual promotion"
INCOMPLETE_TAG = "incomplete"
# A version still without its decision tags this long after it was registered
# was interrupted (tags follow registration within seconds); on a SQLite store,
# under the registry lock, any such version was.
INTERRUPTED_AFTER_S = 600
# Times a registration re-decides when the champion moved under it (a manual promotion).
DECISION_ATTEMPTS = 3
# What a registered model needs at serving time, pinned like the project.
SERVING_PACKAGES = ("mlflow", "tensorflow-cpu", "keras", "numpy", "pandas", "opencv-python-headless",
                    # DICOM films, compressed ones too (pipeline.records.dicom)
                    "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What travels with a registered model, so that its pyfunc loads without the
# project installed: the label order, patient-metadata encoding, the model's
# input contract, image decoding (to preprocess a film the way training did)
# and the pyfunc itself. Not ingest, validation, training or the phantom.
# The module a registered model's pyfunc is; it and what it imports travel with
# the model (serving_modules), so that it loads without the project installed.
SERVING_ENTRY = "serve/pyfunc.py"


def serving_requirements() -> list[str]:
    # Given explicitly: MLflow's inference would load the model in a subprocess.
    return [f"{name}=={package_version(name)}" for name in SERVING_PACKAGES]


def serving_modules(entry: str = SERVING_ENTRY) -> list[str]:
    """`entry` and every module of this package it imports, at any depth and
    inside functions too, with their packages' __init__.py: paths relative to
    the package, found by reading the imports rather than kept by hand."""
    import ast

    found, pending = set(), [entry, "__init__.py"]
    while pending:
        module = pending.pop()
        if module in found:
            continue
        found.add(module)
        parts = module.split("/")[:-1]
        pending += ["/".join([*parts[:depth], "__init__.py"]) for depth in range(len(parts) + 1)]
        for node in ast.walk(ast.parse((PACKAGE_DIR / module).read_text())):
            names = ([node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                     if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                path = name.removeprefix("pipeline.").replace(".", "/") + ".py"
                if name.startswith("pipeline.") and (PACKAGE_DIR / path).is_file():
                    pending.append(path)
    return sorted(found)


def serving_package(folder: Path) -> Path:
    """A copy of the serving_modules of this package under folder/pipeline."""
    target = folder / "pipeline"
    for module in serving_modules():
        (target / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_DIR / module, target / module)
    return target


def registry_model_metadata(
    thresholds: dict[str, float], preprocessing: dict, metrics: dict, test_manifest: str | None = None,
    recalibration: dict | None = None, data_source: str | None = None, serving: dict | None = None,
) -> dict:
    """What makes a registered model self-describing: label order, operating
    thresholds (on the recalibrated probabilities, when it has a
    recalibration), the preprocessing it expects, and the scores and test set
    that the champion rule compares."""
    return {
        "findings": list(FINDINGS),
        "thresholds": {f: float(thresholds[f]) for f in FINDINGS},
        "recalibration": recalibration,
        "preprocessing": preprocessing,
        "mean_auc": metrics.get("mean_auc"),
        "mean_auc_ci": _interval(metrics.get("mean_auc_ci")),
        "auc": metrics.get("auc", {}),
        "auc_missing_reason": metrics.get("auc_missing_reason", {}),
        "mean_auc_findings": metrics.get("mean_auc_findings"),
        "ci_method": metrics.get("ci_method"),
        "test_manifest": test_manifest,
        "test_images": None if metrics.get("test_images") is None else int(metrics["test_images"]),
        "test_patients": None if metrics.get("test_patients") is None else int(metrics["test_patients"]),
        "test_positives": metrics.get("test_positives"),
        "auc_ci": {f: _interval([metrics["auc_ci_low"].get(f), metrics["auc_ci_high"].get(f)])
                   for f in FINDINGS} if metrics.get("auc_ci_low") else None,
        "sensitivity": metrics.get("sensitivity"),
        "specificity": metrics.get("specificity"),
        "threshold_method": metrics.get("threshold_method"),
        "min_positives": metrics.get("min_positives"),
        "data_source": data_source,
        # what its server accepts (evaluate.serving); None: no count limit, MAX_FILE_BYTES a film
        "serving": serving,
    }


def _interval(bounds) -> list | None:
    return None if bounds is None else [None if b is None else float(b) for b in bounds]


def model_signature():
    """The pyfunc's signature (pipeline.serve.pyfunc): a DataFrame of films in
    (`image`, a film file's bytes, base64 in MLflow's REST JSON; optional
    `age`, `sex`, `view`), and per film the 14 probabilities, the positive
    findings, the answering version and the reason a film was not scored."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

    from pipeline.core.patient import IMAGE_INPUT

    # age as Any: MLflow refuses whole numbers in a double column ("cannot safely
    # convert int64"), and clients send 61; the pyfunc checks it (pipeline.core.patient).
    inputs = Schema([ColSpec(DataType.binary, IMAGE_INPUT), ColSpec(AnyType(), "age", required=False),
                     ColSpec(DataType.string, "sex", required=False), ColSpec(DataType.string, "view", required=False)])
    outputs = Schema([*(ColSpec(DataType.double, finding, required=False) for finding in FINDINGS),
                      ColSpec(Array(DataType.string), "findings"),
                      ColSpec(DataType.string, "model_name", required=False),
                      ColSpec(DataType.string, "model_version", required=False),
                      ColSpec(DataType.string, "error", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def champion_version(client, registered_name: str) -> int | None:
    """The version holding the champion alias, or None (no such model or alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(registered_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (registered.aliases or {}).get(CHAMPION)
    return int(version) if version is not None else None


def register_model(
    mlflow,
    model: keras.Model,
    registered_name: str,
    metadata: dict,
    tags: dict[str, str],
    decision: dict,
    params: dict | None = None,
    redecide: Callable[[], dict] | None = None,
    card_artifact: str | None = None,
    artifacts: dict[str, Path] | None = None,
) -> dict:
    """Log `model` to the active run as a pyfunc with named outputs and a
    signature (pipeline.serve.pyfunc, model_signature), register it as a new
    version tagged with its rounded scores (mean_auc, auc_<finding>,
    threshold_<finding>: pipeline.model.version_notes), test manifest, `tags`
    and the champion `decision` (from pipeline.model.champion: {"promote",
    "rule", "reasons", "champion_version", "comparison"}), describe it in
    markdown, give it the challenger alias, and the champion alias if the
    decision promotes it. `params` (the training params) go to the run as
    params.json, not into a tag. Full-precision scores stay in the MLmodel
    metadata. With `redecide`, the champion is read again just before the
    aliases move and, if it changed since `decision`, the decision is made
    again against the new one (compare-and-set, for stores without a lock).
    A promotion retires the previous champion (retire_champion). With
    `card_artifact`, the description links to that artifact of the run (the model card).
    `artifacts` ({name: file}) travel with the registered model (log_and_register).

    Returns {"version", "champion": bool, "rule", "reasons", "compared_with", "decision"}.
    """
    if params is not None:
        mlflow.log_dict(params, "params.json")  # on the run, not a JSON tag
    version = log_and_register(mlflow, model, registered_name, dict(metadata), artifacts)
    client = mlflow.MlflowClient()
    if redecide is not None:
        decision = current_decision(client, registered_name, decision, redecide)
    decided = decision_tags(decision)
    version_tags = {**tags, **score_tags(metadata), **decided}
    for key, value in version_tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    run = mlflow.active_run().info
    changes = champion_changes(mlflow, client, registered_name, decision.get("champion_version"), params, tags)
    card_link = (f"#/experiments/{run.experiment_id}/runs/{run.run_id}/artifacts/{card_artifact}"
                 if card_artifact else None)
    client.update_model_version(registered_name, str(version),
                                description=version_description(metadata, decision, params, changes, card_link))
    held = client.get_registered_model(registered_name).aliases or {}
    client.set_registered_model_alias(registered_name, CHALLENGER, str(version))
    record_decided_move(client, registered_name, CHALLENGER, held.get(CHALLENGER), version, decision, metadata)
    if decision["promote"]:
        client.set_registered_model_alias(registered_name, CHAMPION, str(version))
        previous = decision.get("champion_version")  # the alias's holder, checked by current_decision
        record_decided_move(client, registered_name, CHAMPION, previous, version, decision, metadata)
        if previous is not None and int(previous) != version:
            retire_champion(client, registered_name, int(previous), version, decision["rule"])
    mlflow.set_tags({"registry_version": str(version), **decided})
    return {"version": version, "champion": bool(decision["promote"]), "rule": decision["rule"],
            "reasons": list(decision["reasons"]), "compared_with": decision.get("champion_version"),
            "decision": decision}


def record_decided_move(client, registered_name: str, alias: str, previous, version: int, decision: dict,
                        metadata: dict) -> None:
    """The evaluate stage's move of `alias` onto `version`, in the alias history
    (pipeline.model.alias_history), with the decision's rule, reasons and paired comparison."""
    import mlflow

    comparison = decision.get("comparison") or {}
    ci = comparison.get("mean_auc_diff_ci")
    active = mlflow.active_run()
    record_move(client, registered_name, AliasMove(
        time_ms=now_ms(), alias=alias, from_version=None if previous is None else int(previous), to_version=version,
        actor=user_name(), how=HOW_AUTOMATIC, rule=decision["rule"], reasons="; ".join(decision["reasons"]),
        mean_auc_difference=comparison.get("mean_auc_diff"),
        mean_auc_difference_ci=None if not ci or None in ci else (float(ci[0]), float(ci[1])),
        test_manifest=metadata.get("test_manifest"), decided_in_run=active.info.run_id if active else None))


def user_name() -> str:
    """Who ran the command, as the history and the promotion tags record it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container without a passwd entry
        return f"uid {os.getuid()}"


def log_and_register(mlflow, model: keras.Model, registered_name: str, metadata: dict,
                     artifacts: dict[str, Path] | None = None) -> int:
    """`model` logged to the active run as a pyfunc (with the Keras file, the
    serving code and its pinned packages, and `artifacts`: {name: file}, e.g.
    the reference profile) and registered: the new version's number, also
    written into the model's artifacts (REGISTRATION_FILE) so that its server
    names the version in every answer."""
    from pipeline.serve.api import pyfunc_model

    # Made before MLflow's event lines are turned off: importing the pyfunc's
    # module (mlflow.pyfunc) sets MLflow's logging up again, lines back on.
    python_model = pyfunc_model()
    with tempfile.TemporaryDirectory(prefix="cxr-register-") as folder:
        keras_file = Path(folder) / "model.keras"
        model.save(keras_file)
        # Logged on the run first, so that the MLmodel's artifact `uri` names the
        # run's copy (runs:/...) rather than this temporary folder.
        mlflow.log_artifact(str(keras_file), KERAS_ARTIFACT)
        run_id = mlflow.active_run().info.run_id
        keras_uri = f"runs:/{run_id}/{KERAS_ARTIFACT}/{keras_file.name}"
        pyfunc_artifacts = {KERAS_ARTIFACT: keras_uri}
        for name, path in (artifacts or {}).items():
            mlflow.log_artifact(str(path), name)
            pyfunc_artifacts[name] = f"runs:/{run_id}/{name}/{Path(path).name}"
        with mlflow_event_lines_off():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model,
                artifacts=pyfunc_artifacts,
                code_paths=[str(serving_package(Path(folder)))],
                registered_model_name=registered_name,
                pip_requirements=serving_requirements(),
                signature=model_signature(),
                metadata=metadata,  # what the pyfunc serves by: thresholds, fit, recalibration, limits
                await_registration_for=60,
            )
        version = int(info.registered_model_version)
        registration = Path(folder) / REGISTRATION_FILE
        registration.write_text(json.dumps({"name": registered_name, "version": version}))
        mlflow.MlflowClient().log_model_artifact(info.model_id, str(registration))
    return version


def champion_changes(mlflow, client, registered_name: str, champion: int | None, params: dict | None,
                     tags: dict[str, str]) -> list[str] | None:
    """The description's "what changed from champion version N" lines (None without a champion)."""
    from mlflow.exceptions import MlflowException

    from pipeline.core.tracking import flatten_params

    if champion is None:
        return None
    theirs = client.get_model_version(registered_name, str(champion))
    try:
        their_params = flatten_params(mlflow.artifacts.load_dict(f"runs:/{theirs.run_id}/params.json"))
    except (MlflowException, OSError, ValueError):  # registered before params.json, or its artifacts are gone
        their_params = None
    return changes_from_champion(
        champion, {"params": their_params, **{k: theirs.tags.get(k) for k in ("data_hash", "git_commit")}},
        {"params": None if params is None else flatten_params(params),
         **{k: tags.get(k) for k in ("data_hash", "git_commit")}})


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def tag_version_and_run(client, registered_name: str, version: int, tags: dict[str, str]) -> None:
    """Set `tags` on the version and on its run (the runs table shows the run's),
    so that neither page says what the other no longer does. A run gone from
    the store keeps nothing to contradict."""
    from mlflow.exceptions import MlflowException

    for key, value in tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    run_id = client.get_model_version(registered_name, str(version)).run_id
    with contextlib.suppress(MlflowException):  # its run may be gone
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def retire_champion(client, registered_name: str, version: int, successor: int, how: str) -> None:
    """The version that lost the champion alias says so, in its tags and at
    the top of its description, so that no page contradicts the aliases."""
    until = f"{now_utc()}, when version {successor} took the alias ({how})"
    tag_version_and_run(client, registered_name, version, {DECISION_TAG: FORMER_CHAMPION, CHAMPION_UNTIL_TAG: until})
    old = client.get_model_version(registered_name, str(version)).description
    client.update_model_version(registered_name, str(version), description=with_status(
        old, FORMER_CHAMPION, f"Champion until {until}. Below: what was decided when it was registered."))


def current_decision(client, registered_name: str, decision: dict, redecide: Callable[[], dict]) -> dict:
    """`decision`, or a new one from redecide() while the champion it was made
    against is no longer the champion; a champion still moving after
    DECISION_ATTEMPTS decisions is an error, not a guess."""
    for _ in range(DECISION_ATTEMPTS):
        if champion_version(client, registered_name) == decision.get("champion_version"):
            return decision
        decision = redecide()
    if champion_version(client, registered_name) == decision.get("champion_version"):
        return decision
    raise RuntimeError(f"registered model {registered_name}: the champion kept moving during "
                       f"{DECISION_ATTEMPTS} decisions; rerun the stage")


def interrupted(version, run_status: str | None, exclusive: bool, active_run_id: str | None, now_ms: int) -> bool:
    """Whether a version without decision tags is the remains of a killed registration
    (see mark_interrupted_registrations for the rule)."""
    if DECISION_TAG in version.tags or INCOMPLETE_TAG in version.tags:
        return False
    age_s = (now_ms - int(version.creation_timestamp or 0)) / 1000
    return (exclusive or version.run_id == active_run_id or run_status != "RUNNING"
            or age_s > INTERRUPTED_AFTER_S)


def mark_interrupted_registrations(client, registered_name: str, exclusive: bool,
                                   active_run_id: str | None = None) -> list[int]:
    """Tag `incomplete` the versions of registered_name whose registration was
    killed before its decision (no decision tags): all of them when `exclusive`
    (the SQLite registry lock is held, so no registration is in flight), else
    those whose run is the active one (an earlier attempt of this run), has
    ended or is gone, or that were registered over INTERRUPTED_AFTER_S ago.
    Returns the versions tagged."""
    from mlflow.exceptions import MlflowException

    marked = []
    now_ms = int(time.time() * 1000)
    for version in client.search_model_versions(f"name='{registered_name}'"):
        if DECISION_TAG in version.tags or INCOMPLETE_TAG in version.tags:
            continue
        try:
            status = client.get_run(version.run_id).info.status if version.run_id else None
        except MlflowException:
            status = None
        if interrupted(version, status, exclusive, active_run_id, now_ms):
            client.set_model_version_tag(registered_name, version.version, INCOMPLETE_TAG,
                                         f"registration interrupted before its decision (run {version.run_id})")
            marked.append(int(version.version))
    return sorted(marked)


def holds_registry_lock(uri: str) -> bool:
    """Whether registry_lock serialises every registration on this store (SQLite and servers)."""
    return sqlite_path(uri) is not None or uri.startswith(("http://", "https://"))


def register_decided(
    mlflow,
    model: keras.Model,
    registered_name: str,
    metadata: dict,
    tags: dict[str, str],
    decide: Callable[[], dict],
    params: dict | None = None,
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    card_artifact: str | None = None,
    artifacts: dict[str, Path] | None = None,
) -> dict:
    """The champion decision and the registration as one step, under the
    store's registry lock (pipeline.core.store_lock.registry_lock: a file lock
    for SQLite, a lease on a server) from reading the champion to moving the
    alias; register_model's compare-and-set (`redecide`) guards against a
    champion moved by hand meanwhile.
    Versions left by killed registrations are tagged `incomplete` first.
    `decide()` returns the decision (see register_model). Returns
    register_model's record plus "interrupted": the versions tagged."""
    uri = mlflow.get_tracking_uri()
    with registry_lock(uri, registered_name, timeout_s):
        client = mlflow.MlflowClient()
        active = mlflow.active_run()
        marked = mark_interrupted_registrations(client, registered_name, exclusive=holds_registry_lock(uri),
                                                active_run_id=active.info.run_id if active else None)
        for version in marked:
            print(f"registry: {registered_name} version {version} tagged {INCOMPLETE_TAG}: its registration was "
                  "interrupted before its decision", file=sys.stderr)
        registry = register_model(mlflow, model, registered_name, metadata, tags, decide(), params,
                                  redecide=decide, card_artifact=card_artifact, artifacts=artifacts)
    return {**registry, "interrupted": marked}


def promote_version(client, registered_name: str, version: int, reason: str, user: str) -> int | None:
    """Give `version` the champion alias by hand, tagged with who and why
    (on the version and its run); the version that held it is retired
    (retire_champion). Returns the version that held it before (None if none did)."""
    from mlflow.exceptions import MlflowException
    previous = champion_version(client, registered_name)
    tags = {DECISION_TAG: CHAMPION, RULE_TAG: MANUAL_RULE, REASONS_TAG: f"promoted by {user}: {reason}",
            "promoted_by": user, "promotion_reason": reason}
    if previous is not None:
        tags[COMPARED_TAG] = str(previous)
    tag_version_and_run(client, registered_name, version, tags)
    client.set_registered_model_alias(registered_name, CHAMPION, str(version))
    promoted = client.get_model_version(registered_name, str(version))
    record_move(client, registered_name, AliasMove(
        time_ms=now_ms(), alias=CHAMPION, from_version=previous, to_version=version, actor=user, how=HOW_MANUAL,
        rule=MANUAL_RULE, reasons=reason, test_manifest=promoted.tags.get("test_manifest")))
    if CHAMPION_UNTIL_TAG in promoted.tags:  # a former champion back in office
        client.delete_model_version_tag(registered_name, str(version), CHAMPION_UNTIL_TAG)
        with contextlib.suppress(MlflowException):  # its run may be gone
            client.delete_tag(promoted.run_id, CHAMPION_UNTIL_TAG)
    old = promoted.description
    client.update_model_version(registered_name, str(version), description=with_status(
        old, CHAMPION, f"Promoted by hand by {user} on {now_utc()}: {reason}. Below: what was decided when it "
                       "was registered."))
    if previous is not None and previous != version:
        retire_champion(client, registered_name, previous, version, f"{MANUAL_RULE} by {user}: {reason}")
    return previous


def build_parser() -> argparse.ArgumentParser:
    from pipeline.core.config import project_registered_model

    parser = argparse.ArgumentParser(prog="python -m pipeline.model.registry",
                                     description="Move the champion alias by hand (logged on the version), or read "
                                                 "the history of the aliases.")
    commands = parser.add_subparsers(dest="command", required=True)
    promote = commands.add_parser("promote", help="give VERSION the champion alias")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason", required=True, help="why, recorded on the version and in the history")
    history = commands.add_parser("history", help="every move of the champion and challenger aliases, oldest first")
    history.add_argument("--at", metavar="TIME", nargs="+",
                         help="say which version held each alias at each TIME (ISO 8601, UTC unless an offset is "
                              "given, e.g. 2026-12-04T10:30:00Z)")
    history.add_argument("--json", action="store_true", help="print the moves as one JSON list")
    default = project_registered_model()
    for command in (promote, history):
        command.add_argument("--model", default=default, help=f"registered model name (default: "
                             f"mlflow.registered_model of ./params.yaml, {default})")
        command.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or mlruns/mlflow.db")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.model.registry promote VERSION --reason TEXT` or `... history [--at TIME] [--json]`."""
    args = build_parser().parse_args(argv)
    from pipeline.core.tracking import disable_telemetry, tracking_uri

    disable_telemetry()
    store = args.tracking_uri or tracking_uri()
    if args.command == "history":
        return history_command(args, store)
    from pipeline.serve.api import ModelLoadError, load_model

    uri = f"models:/{args.model}/{args.version}"
    try:
        load_model(uri, tracking_uri=store)  # refuse a version whose artifacts do not load
    except ModelLoadError as exc:
        print(f"promote: error: not promoted: {exc}", file=sys.stderr)
        return 1
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    with registry_lock(store, args.model):  # one alias move at a time, so the history's moves chain
        previous = promote_version(client, args.model, args.version, args.reason, user_name())
    print(f"promote: {args.model} version {args.version} is champion (was {previous}); reason recorded",
          file=sys.stderr)
    return 0


def history_command(args: argparse.Namespace, store: str) -> int:
    """Print the alias history (or who held each alias at --at); 1 when the store or the model cannot be read."""
    from pipeline.model.alias_history import history_lines, holder_at, parse_time, read_history, unrecorded_holders

    try:
        times = [] if args.at is None else [(text, parse_time(text)) for text in args.at]
    except ValueError as exc:
        print(f"history: error: --at {exc}", file=sys.stderr)
        return 2
    from pipeline.serve.api import ModelLoadError, require_tracking_store

    try:  # a missing SQLite store is said so, not created
        require_tracking_store(f"{args.model} history", store)
    except ModelLoadError as exc:
        print(f"history: error: {exc}", file=sys.stderr)
        return 1
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        history = read_history(client, args.model)
        aliases = client.get_registered_model(args.model).aliases or {}
    except MlflowException as exc:
        print(f"history: error: {args.model} in {store}: {first_line(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([move.as_json() for move in history], indent=2))
    elif not times:
        print("\n".join(history_lines(history)) or f"no alias of {args.model} has moved through the pipeline yet")
    for text, when in times:
        for alias in sorted({move.alias for move in history}) or [CHAMPION]:
            holder = holder_at(history, alias, when)
            print(f"{alias} at {text}: " + (f"version {holder}" if holder is not None else "no version"))
    for note in unrecorded_holders(history, aliases):
        print(f"history: note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
