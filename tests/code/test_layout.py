"""The shape of the code base: sub-packages by stage, no import circle, short
modules, thin stage scripts, and a registered model that ships only serving code."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"
MAX_MODULE_LINES = 600
MAX_STAGE_SCRIPT_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The pipeline modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in candidates if name in known and name != "pipeline")
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(path, set(known)) - {name} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_package_is_in_sub_packages_by_stage():
    sub_packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert {"core", "data", "records", "model", "explain", "serve", "phantom"} <= sub_packages
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the sub-packages: {loose}"


def test_core_depends_on_no_stage():
    # core is what every stage shares; a core module reaching into a stage would
    # drag that stage's dependencies (TensorFlow, Great Expectations) everywhere.
    for name, imports in import_graph().items():
        if name.startswith("pipeline.core."):
            outside = sorted(i for i in imports if not i.startswith("pipeline.core"))
            assert not outside, f"{name} imports {outside}"


def test_serving_and_the_model_meet_at_one_door():
    # serving loads and runs a registered model without the training code; the
    # evaluate stage scores the champion as it is served through pipeline.serve.api only
    for name, imports in import_graph().items():
        if name.startswith("pipeline.serve."):
            assert not [i for i in imports if i.startswith("pipeline.model")], f"{name} imports the model package"
        if name.startswith("pipeline.model."):
            doors = {i for i in imports if i.startswith("pipeline.serve")}
            assert doors <= {"pipeline.serve.api"}, f"{name} imports {sorted(doors)} of serving"


def sub_package_graph() -> dict[str, set[str]]:
    """Which sub-packages each sub-package imports."""
    graph: dict[str, set[str]] = {}
    for name, imports in import_graph().items():
        if name.count(".") < 2:  # pipeline/__init__.py, a sub-package's __init__.py
            continue
        package = name.split(".")[1]
        graph.setdefault(package, set()).update(
            i.split(".")[1] for i in imports if i.count(".") >= 2 and i.split(".")[1] != package)
    return graph


def test_sub_packages_import_in_one_direction():
    cycle = find_cycle(sub_package_graph())
    assert cycle is None, "sub-packages import each other: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_modules_stay_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PROJECT_ROOT)} has {lines} lines"


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "src").glob("*.py")), ids=lambda p: p.name)
def test_stage_scripts_are_thin(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_STAGE_SCRIPT_LINES, f"{path.name} is over {MAX_STAGE_SCRIPT_LINES} lines"
    assert "sys.path" not in text, f"{path.name} edits sys.path (the package is installed editable)"
    assert f'run_stage("{path.stem}", main)' in text
