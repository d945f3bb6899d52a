"""params.yaml survives `dvc exp run -S`: DVC rewrites the file through
ruamel, so a value set from the command line must change that line only."""
from __future__ import annotations

import difflib
import shutil

import pytest
import yaml

from tests.conftest import PROJECT_ROOT


def _leaves(params: dict, prefix: str = "") -> list[tuple[str, object]]:
    found = []
    for key, value in params.items():
        if isinstance(value, dict):
            found += _leaves(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


@pytest.mark.parametrize("override", ["train.epochs=10", "explain.layer=relu", "ingest.split.method=official"])
def test_a_set_param_changes_only_its_own_line(tmp_path, override):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls

    params = tmp_path / "params.yaml"
    shutil.copy2(PROJECT_ROOT / "params.yaml", params)
    before = params.read_text().splitlines()
    apply_overrides(str(params), [override])
    changed = [line for line in difflib.unified_diff(before, params.read_text().splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    key, value = override.split("=")
    assert len(changed) == 2 and changed[1][1:].strip().startswith(f"{key.rsplit('.', 1)[1]}: {value}"), changed


def test_every_value_round_trips_through_dvc(tmp_path):
    """Setting each param to its own value leaves the file byte-identical."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy2(PROJECT_ROOT / "params.yaml", params)
    values = yaml.safe_load(params.read_text())
    overrides = [f"{k}={'null' if v is None else v}" for k, v in _leaves(values) if not isinstance(v, list)]
    apply_overrides(str(params), overrides)
    assert params.read_text() == (PROJECT_ROOT / "params.yaml").read_text()
