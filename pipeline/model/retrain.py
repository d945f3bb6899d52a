"""Retrain when, and only when, the data, params or code changed.

`make retrain` (and the CI workflow .github/workflows/retrain.yml) runs
`python -m pipeline.model.retrain`: it asks `dvc status` what changed since
dvc.lock was written, says so, and runs `dvc repro`; with nothing changed it
runs nothing. The evaluate stage then registers the new model under the
registry's champion / challenger rule.
"""
from __future__ import annotations

import json
import subprocess
import sys

NOTHING_TO_DO = "retrain: data, params and code unchanged; nothing to do"


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
    print("retrain: running dvc repro", flush=True)
    return dvc("repro").returncode


if __name__ == "__main__":
    sys.exit(main())
