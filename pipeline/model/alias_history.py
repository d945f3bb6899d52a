"""Who held an alias when: an append-only history of every move of the
`champion` and `challenger` aliases, kept in the tracking store itself.

MLflow keeps no history of aliases: once `champion` moves, which version held
it on a date is lost. Every move the pipeline makes (the evaluate stage's
decision, `python -m pipeline.model.registry promote`) therefore appends one
run to the experiment "<registered model> alias history" of the same store,
so the history follows a team's tracking server. A run's params cannot be
changed once logged (MLflow refuses a second value), which makes each entry
append-only; the experiment's runs table in the MLflow UI is the history, one
row per move. Moves made outside the pipeline (the MLflow UI, a raw client)
are not recorded; `history` says so when the aliases disagree with it.

    python -m pipeline.model.registry history [--at "2026-12-04 10:30"] [--json]
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

HISTORY_SUFFIX = " alias history"
HOW_AUTOMATIC = "automatic (evaluate stage)"
HOW_MANUAL = "by hand (promote)"
NONE = "none"
# MLflow's limit on a param value, less room for the ellipsis.
PARAM_LIMIT = 6000 - 3
PAGE = 1000


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: when, who, from which version to which, and why."""

    time_ms: int  # when the alias moved (ms since the epoch, UTC)
    alias: str
    from_version: int | None  # None: the alias was new
    to_version: int
    actor: str  # the user who ran the stage or the promote command
    how: str  # HOW_AUTOMATIC or HOW_MANUAL
    rule: str
    reasons: str
    mean_auc_difference: float | None = None  # the paired comparison's (new - champion), when there was one
    mean_auc_difference_ci: tuple[float, float] | None = None
    test_manifest: str | None = None  # the test set's hash the decision was made on
    decided_in_run: str | None = None  # the MLflow run that decided (an evaluate run)

    @property
    def time_utc(self) -> str:
        return utc_text(self.time_ms)

    def as_params(self) -> dict[str, str]:
        ci = self.mean_auc_difference_ci
        return {"time_utc": self.time_utc, "time_ms": str(self.time_ms), "alias": self.alias,
                "from_version": text_of(self.from_version), "to_version": str(self.to_version),
                "actor": self.actor, "how": self.how, "rule": clip(self.rule), "reasons": clip(self.reasons),
                "mean_auc_difference": text_of(self.mean_auc_difference),
                "mean_auc_difference_ci": NONE if ci is None or None in ci else f"{ci[0]!r} {ci[1]!r}",
                "test_manifest": text_of(self.test_manifest), "decided_in_run": text_of(self.decided_in_run)}

    def as_json(self) -> dict:
        return {**asdict(self), "time_utc": self.time_utc}


def utc_text(time_ms: int) -> str:
    moment = datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def text_of(value) -> str:
    return NONE if value is None else str(value)


def clip(text: str) -> str:
    return text if len(text) <= PARAM_LIMIT else text[:PARAM_LIMIT] + "..."


def move_from_params(params: dict[str, str]) -> AliasMove:
    def optional(key: str, kind=str):
        value = params.get(key, NONE)
        return None if value == NONE else kind(value)

    ci = optional("mean_auc_difference_ci")
    return AliasMove(
        time_ms=int(params["time_ms"]), alias=params["alias"], from_version=optional("from_version", int),
        to_version=int(params["to_version"]), actor=params.get("actor", ""), how=params.get("how", ""),
        rule=params.get("rule", ""), reasons=params.get("reasons", ""),
        mean_auc_difference=optional("mean_auc_difference", float),
        mean_auc_difference_ci=None if ci is None else tuple(float(x) for x in ci.split()),
        test_manifest=optional("test_manifest"), decided_in_run=optional("decided_in_run"))


def history_experiment(registered_name: str) -> str:
    return f"{registered_name}{HISTORY_SUFFIX}"


def now_ms() -> int:
    return int(time.time() * 1000)


def record_move(client, registered_name: str, move: AliasMove) -> str:
    """Append `move` to the history of registered_name (a new, finished run of
    its history experiment, created if need be); returns the run's id."""
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    name = history_experiment(registered_name)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, tags={"mlflow.note.content": (
                f"Every move of the champion and challenger aliases of registered model {registered_name}, "
                "one run per move (pipeline.model.alias_history). Append-only: do not edit or delete.")})
        except MlflowException:  # created meanwhile by another process
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    source = "none" if move.from_version is None else f"v{move.from_version}"
    run = client.create_run(experiment_id, start_time=move.time_ms,
                            run_name=f"{move.alias}: {source} -> v{move.to_version}",
                            tags={"alias": move.alias, "to_version": str(move.to_version)})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in move.as_params().items()],
                     tags=[RunTag("how", move.how)])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=move.time_ms)
    return run.info.run_id


def read_history(client, registered_name: str) -> list[AliasMove]:
    """Every recorded move of registered_name's aliases, oldest first ([] when none was recorded)."""
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(history_experiment(registered_name))
    if experiment is None:
        return []
    moves, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=PAGE,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        moves += [move_from_params(run.data.params) for run in page if "time_ms" in run.data.params]
        token = page.token
        if not token:
            break
    return sorted(moves, key=lambda move: move.time_ms)


def holder_at(history: list[AliasMove], alias: str, when_ms: int) -> int | None:
    """The version that held `alias` at when_ms by the history (None: nobody yet)."""
    holder = None
    for move in history:
        if move.alias == alias and move.time_ms <= when_ms:
            holder = move.to_version
    return holder


def parse_time(text: str) -> int:
    """'2026-12-04 10:30', '2026-12-04T10:30:05.250Z', with or without an
    offset (UTC when none) -> ms since the epoch; ValueError saying what is expected."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give ISO 8601, e.g. 2026-12-04 10:30 or "
                         "2026-12-04T10:30:05Z (UTC unless an offset is given)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * 1000)


def unrecorded_holders(history: list[AliasMove], aliases: dict[str, str]) -> list[str]:
    """A sentence for each alias whose holder now differs from the history's
    last entry: moved outside the pipeline (the MLflow UI, a raw client)."""
    notes = []
    for alias in sorted({*aliases, *(move.alias for move in history)}):
        recorded = holder_at(history, alias, 2**62)
        current = aliases.get(alias)
        current = None if current is None else int(current)
        if recorded != current:
            notes.append(f"the {alias} alias is now on {text_of(current)} but the history's last move put it on "
                         f"{text_of(recorded)}: it was moved outside the pipeline (MLflow UI or client), unrecorded")
    return notes


def history_lines(history: list[AliasMove]) -> list[str]:
    """The history as a person reads it, one line per move."""
    lines = []
    for move in history:
        source = "none" if move.from_version is None else f"v{move.from_version}"
        line = f"{move.time_utc}  {move.alias:<10} {source:>5} -> v{move.to_version:<4} {move.how}, {move.actor}: " \
               f"{move.rule}" + (f" ({move.reasons})" if move.reasons else "")
        if move.mean_auc_difference is not None:
            ci = move.mean_auc_difference_ci
            interval = f" (95% CI {ci[0]:+.4f} to {ci[1]:+.4f})" if ci else ""
            line += f"; mean AUC difference {move.mean_auc_difference:+.4f}{interval}"
        if move.test_manifest:
            line += f"; test set {move.test_manifest}"
        lines.append(line)
    return lines
