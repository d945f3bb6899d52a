"""Retrain when, and only when, the data, params or code changed.

`make retrain` (and the CI workflow .github/workflows/retrain.yml) runs
`python -m pipeline.model.retrain`: it asks `dvc status` what changed since
dvc.lock was written, says so, and runs `dvc repro`; with nothing changed it
runs nothing. The evaluate stage then registers the new model under the
registry's champion / challenger rule.

When the data changed, ingest runs first, and the films it added are
checked against the current champion's reference profile (`cxr monitor`'s
test) before the new model can replace that champion. What changed, that
verdict and the champion decision become reports/retrain/pull_request.md,
the body of the workflow's pull request (pipeline.model.retrain_report).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

NOTHING_TO_DO = "retrain: data, params and code unchanged; nothing to do"
REPORT_DIR = Path("reports") / "retrain"
BODY_FILE = REPORT_DIR / "pull_request.md"
DATA_STAGES = ("phantom", "ingest")


class RetrainError(RuntimeError):
    """`dvc status` failed; printed as one line."""


def dvc(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    # This interpreter's DVC, so the venv's version runs whatever is on PATH.
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=capture, text=True)


def pipeline_changes() -> dict:
    """`dvc status --json`: {stage or .dvc file: [changes]}, empty when up to date."""
    result = dvc("status", "--json", capture=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise RetrainError(f"dvc status failed ({result.returncode}): {lines[-1]}")
    return json.loads(result.stdout or "{}")


def describe_change(change) -> str:
    """One entry of a stage's status: 'always changed', or {kind: {path: state}}."""
    if isinstance(change, str):
        return change
    parts = []
    for kind, paths in change.items():
        if not isinstance(paths, dict):
            parts.append(f"{kind}: {paths}")
            continue
        # Params come as {"params.yaml": {"train.epochs": "modified"}}.
        items = (
            f"{path} ({', '.join(f'{key} {value}' for key, value in state.items())})"
            if isinstance(state, dict) else f"{path} ({state})"
            for path, state in paths.items()
        )
        parts.append(f"{kind}: {', '.join(items)}")
    return "; ".join(parts)


def describe(changes: dict) -> list[str]:
    return [
        f"retrain: {stage}: {'; '.join(describe_change(c) for c in entries)}"
        for stage, entries in changes.items()
    ]


def data_changed(changes: dict) -> bool:
    """Whether ingest will run: its own stage or the phantom changed, or a tracked data set (.dvc)."""
    return any(name in DATA_STAGES or name.endswith(".dvc") for name in changes)


def fresh_json(path: Path, since: float) -> dict | None:
    """A report written by this run (modified since `since`), else None."""
    try:
        return json.loads(path.read_text()) if path.stat().st_mtime >= since else None
    except (OSError, ValueError):
        return None


def retrain(changes: dict) -> int:
    """Ingest first when the data changed, the added films monitored against
    the current champion, then the rest of the pipeline; the pull-request body written."""
    from pipeline.core.atomic import write_text_atomic
    from pipeline.core.config import load_params, project_registered_model
    from pipeline.core.tracking import git_commit
    from pipeline.model.retrain_report import monitor_added_films, pull_request_body

    params = load_params()
    paths = {key: Path(value) for key, value in params["paths"].items()}
    started, change, monitor = time.time(), None, {"skipped": "the data is unchanged"}
    if data_changed(changes):
        print("retrain: running dvc repro ingest (the data changed)", flush=True)
        code = dvc("repro", "ingest").returncode
        if code:
            return code
        change = json.loads(paths["ingest_report"].read_text())["data_change"]
        monitor = monitor_added_films(change, paths["manifest"], f"models:/{project_registered_model()}@champion",
                                      REPORT_DIR / "monitor")
        said = monitor.get("skipped") or f"{monitor['verdict']} (drift score {monitor['drift_score']:.2f})"
        print(f"retrain: the added films against the champion: {said}", flush=True)
    print("retrain: running dvc repro", flush=True)
    code = dvc("repro").returncode
    evaluation = fresh_json(paths["evaluate_reports"] / "evaluate.json", started)
    body = pull_request_body(git_commit(), change, params["ingest"]["source"], monitor, evaluation,
                             REPORT_DIR / "monitor" / "index.html")
    write_text_atomic(BODY_FILE, body)
    print(f"retrain: pull-request body: {BODY_FILE}")
    return code


def main() -> int:
    try:
        changes = pipeline_changes()
    except RetrainError as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 1
    if not changes:
        print(NOTHING_TO_DO)
        return 0
    print("\n".join(describe(changes)))
    return retrain(changes)


if __name__ == "__main__":
    sys.exit(main())
