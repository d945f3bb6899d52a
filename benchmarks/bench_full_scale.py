"""Benchmark: a full-size NIH rehearsal of ingest -> validate -> preprocess under `dvc repro`, then one tf.data epoch.

A Kaggle-layout data root (images_001/images ... images_012/images, as
Kaggle spreads them) of hard links to the 300 real NIH PNGs of
../shared/data/nih-subset, cycling through them, one per row of NIH's
Data_Entry_2017_v2020.csv.gz (all 112,120 rows, or the first --rows), so
every CSV row has an image. The CSV, box list and split lists go beside
them. A temporary git + DVC project (this project's dvc.yaml and code,
params.yaml with ingest.source nih and ingest.root that root, everything
else default) then runs:
  - `dvc status` twice before any repro: DVC hashing the root for the first
    time (every file read and md5'd), then again (its state database);
  - `dvc repro --single-item <stage>` for ingest, validate and preprocess in
    turn, each under a psutil sampler (every --interval s) that sums the RSS
    of the dvc process and all its descendants, and notes the stage's own
    process (`python src/<stage>.py`) and its workers;
  - the size of data/tfrecords/, then a no-op `dvc status`.
Then one epoch over the train shards through pipeline.records.dataset's
make_dataset with the default augmentation, as the train stage builds it
(no model): images/s and the time per batch.
Lines marked "extrapolated, not measured" scale measured rates: preprocess
to 16 cores linearly from its images per CPU second (and, for comparison,
from its wall rate on this shared machine), with the cap its serial parent
process sets; a reduced --rows run to all 112,120 rows. No GPU figure is
given: none was measured.

Needs the hard links on the filesystem of ../shared (--tmp-dir) and about
2 x 50 KB per row of free disk (the shards, and DVC's cache copy of them).

    .venv/bin/python benchmarks/bench_full_scale.py [--rows 112120] [--tmp-dir DIR] [--interval 0.1] [--keep]
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    NIH_PNG_DIR,
    PROJECT_ROOT,
    SHARED_DATA,
    add_output_arguments,
    cores,
    machine_busy_seconds,
    nih_pngs,
    report,
    summary,
)

SECTION = "bench_full_scale"
NIH_ROWS = 112_120
NIH_SUBSET = SHARED_DATA / "nih-subset"
CSV_NAME = "Data_Entry_2017_v2020.csv.gz"
BESIDE_CSV = ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")
# Kaggle's full data set: images_001 holds the first 4,999 images (in CSV order), 002..011 10,000 each, 012 the rest.
KAGGLE_FOLDER_SIZES = (4_999, *([10_000] * 10), 7_121)
PIPELINE_FILES = ("dvc.yaml", "src", "pipeline")
STAGES = ("ingest", "validate", "preprocess")
# A 320px PNG record is ~48 KB; the workspace copy and DVC's cache copy, with room to spare.
DISK_BYTES_PER_ROW = 2 * 60_000
TARGET_CORES = 16
MB = 2**20


# ---------------------------------------------------------------- the data root

def kaggle_folder(position: int) -> str:
    """The Kaggle folder (images_001 ... images_012) of the CSV's `position`-th row (0-based)."""
    end = 0
    for number, size in enumerate(KAGGLE_FOLDER_SIZES, start=1):
        end += size
        if position < end:
            return f"images_{number:03d}"
    raise ValueError(f"row {position} is beyond NIH's {NIH_ROWS:,} rows")


def write_csv_rows(source: Path, destination: Path, rows: int) -> list[str]:
    """Copy `source` (gzip) to `destination`, keeping the header and the first `rows` rows; their Image Index values."""
    image_ids = []
    with gzip.open(source, "rt", encoding="utf-8", newline="") as reader, \
            gzip.open(destination, "wt", encoding="utf-8", newline="") as writer:
        writer.write(reader.readline())
        for line in reader:
            if len(image_ids) == rows:
                break
            writer.write(line)
            image_ids.append(line.split(",", 1)[0])
    return image_ids


def build_root(root: Path, pngs: list[Path], rows: int) -> dict:
    """The Kaggle-layout root: the CSV (first `rows` rows) and one hard link per row, cycling over `pngs`."""
    started = time.perf_counter()
    root.mkdir()
    image_ids = write_csv_rows(NIH_SUBSET / CSV_NAME, root / CSV_NAME, rows)
    for name in BESIDE_CSV:
        if (NIH_SUBSET / name).is_file():
            os.link(NIH_SUBSET / name, root / name)
    folders: set[str] = set()
    for position, image_id in enumerate(image_ids):
        folder = kaggle_folder(position)
        if folder not in folders:
            (root / folder / "images").mkdir(parents=True)
            folders.add(folder)
        os.link(pngs[position % len(pngs)], root / folder / "images" / image_id)
    seconds = time.perf_counter() - started
    sizes = [png.stat().st_size for png in pngs]
    linked_bytes = sum(sizes[k % len(pngs)] for k in range(len(image_ids)))
    return {"rows": len(image_ids), "seconds": seconds, "bytes": linked_bytes, "folders": len(folders)}


# ----------------------------------------------------------------- the project

def tool_env() -> dict:
    """dvc and the stages' `python` from this venv, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "TF_CPP_MIN_LOG_LEVEL": "2"})
    return env


def checked_run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{SECTION}: `{' '.join(command)}` failed in {cwd} (exit {result.returncode}): "
                 f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def make_project(project: Path, root: Path) -> dict:
    """A git + DVC project with this project's pipeline; params default but ingest.source nih, ingest.root `root`."""
    import yaml

    project.mkdir()
    for name in PIPELINE_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, project / name)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["ingest"]["source"] = "nih"
    params["ingest"]["root"] = str(root)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checked_run(["git", "init", "-q"], project)
    checked_run(["dvc", "init", "-q"], project)
    checked_run(["dvc", "config", "core.analytics", "false"], project)
    checked_run(["git", "add", "-A"], project)
    checked_run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "project"],
                project)
    return params


# ------------------------------------------------------------- measured runs

def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def is_stage_process(cmdline: list[str], stage: str | None) -> bool:
    # The stage's python has "src/<stage>.py" as an argument of its own; the shell
    # DVC starts has "python src/<stage>.py" as one, and is not it (a shell that
    # execs python keeps its pid, so the sampler reads each pid's cmdline anew).
    return stage is not None and f"src/{stage}.py" in cmdline


def is_worker_process(cmdline: list[str]) -> bool:
    # pipeline.core.parallel's pool starts its workers with the spawn method (not its resource tracker)
    return any("spawn_main" in part for part in cmdline)


class TreeSampler:
    """Samples a process tree: peak summed RSS of the tree, of its top process
    (dvc), of the stage's own process and of its workers (descendants); when
    the stage process and its workers were seen; the stage process's CPU
    seconds when its first worker appeared and when last seen, and each
    worker's CPU seconds as last seen (a sample's worth short at most)."""

    def __init__(self, pid: int, stage: str | None):
        import psutil

        self.top = psutil.Process(pid)
        self.stage = stage
        self.peaks = {"tree": 0, "top": 0, "stage": 0, "workers": 0}
        self.stage_seen: list[float] = []
        self.workers_seen: list[float] = []
        self.stage_cpu = {"at_first_worker": None, "last": 0.0}
        self.worker_cpu: dict[int, float] = {}
        self.stage_pid: int | None = None

    def sample(self) -> None:
        import psutil

        try:
            tree = [self.top, *self.top.children(recursive=True)]
        except psutil.Error:
            return
        sizes, stage_rss, worker_rss, workers, now = {}, 0, 0, 0, time.perf_counter()
        for member in tree:
            try:
                sizes[member.pid] = member.memory_info().rss
                cmdline = member.cmdline()
                if self.stage_pid is None and is_stage_process(cmdline, self.stage):
                    self.stage_pid = member.pid
                if member.pid == self.stage_pid:
                    stage_rss = sizes[member.pid]
                    times = member.cpu_times()
                    self.stage_cpu["last"] = times.user + times.system
                    self.stage_seen.append(now)
                elif self.stage_pid is not None and self.stage_pid in {p.pid for p in member.parents()}:
                    worker_rss += sizes[member.pid]
                    if is_worker_process(cmdline):
                        workers += 1
                        times = member.cpu_times()
                        self.worker_cpu[member.pid] = times.user + times.system
            except psutil.Error:
                continue
        if workers:
            self.workers_seen.append(now)
            if self.stage_cpu["at_first_worker"] is None:
                self.stage_cpu["at_first_worker"] = self.stage_cpu["last"]
        for name, value in (("tree", sum(sizes.values())), ("top", sizes.get(self.top.pid, 0)),
                            ("stage", stage_rss), ("workers", worker_rss)):
            self.peaks[name] = max(self.peaks[name], value)

    def result(self) -> dict:
        def span(seen: list[float]) -> float:
            return seen[-1] - seen[0] if len(seen) > 1 else float("nan")

        first = self.stage_cpu["at_first_worker"]
        return {"stage_wall": span(self.stage_seen), "workers_wall": span(self.workers_seen),
                "stage_cpu": self.stage_cpu["last"], "workers_cpu": sum(self.worker_cpu.values()),
                "stage_cpu_with_workers": float("nan") if first is None else self.stage_cpu["last"] - first,
                **{f"peak_{name}_mb": value / MB for name, value in self.peaks.items()}}


def run_measured(command: list[str], cwd: Path, interval: float, stage: str | None = None) -> dict:
    """Run `command` under a TreeSampler every `interval` s: its wall time,
    CPU seconds (all reaped descendants), the other processes' use of this
    machine meanwhile (cores), and the sampler's figures."""
    cpu_before, busy_before, started = children_cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    sampler = TreeSampler(process.pid, stage)
    while process.poll() is None:
        sampler.sample()
        time.sleep(interval)
    wall = time.perf_counter() - started
    reader.join(timeout=10)
    text = "".join(output)
    if process.returncode != 0:
        sys.exit(f"{SECTION}: `{' '.join(command)}` failed in {cwd} (exit {process.returncode}): "
                 f"{text.strip()[-3000:]}")
    cpu = children_cpu_seconds() - cpu_before
    busy_after = machine_busy_seconds()
    others = (max(0.0, busy_after - busy_before - cpu) / wall
              if busy_before is not None and busy_after is not None and wall > 0 else float("nan"))
    return {"wall": wall, "cpu": cpu, "others": others, "output": text, **sampler.result()}


def dvc_state_entries(site_cache: Path) -> int | None:
    """Paths whose hash DVC's state database holds (<site cache>/repo/*/hashes/local/cache.db), None if unreadable."""
    import sqlite3

    databases = sorted(site_cache.glob("repo/*/hashes/local/cache.db"))
    if len(databases) != 1:
        return None
    try:
        with sqlite3.connect(f"file:{databases[0]}?mode=ro", uri=True) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])
    except sqlite3.Error:
        return None


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# ----------------------------------------------------------- the train epoch

def train_epoch(tfrecord_dir: Path, params: dict) -> dict:
    """One epoch over the train shards as the train stage builds them (default
    augmentation, batch size and seed; no model): seconds per batch, the first
    (graph, shard interleave and the shuffle buffer's fill) apart."""
    from pipeline.records.dataset import make_dataset, read_shard_index, shard_files

    train = params["train"]
    records = read_shard_index(tfrecord_dir)["splits"]["train"]["records"]
    dataset = make_dataset(shard_files(tfrecord_dir, "train"), int(train["batch_size"]), training=True,
                           augmentation=train.get("augment") or None, seed=int(params["seed"]),
                           cache=bool(train.get("cache", False)), records=records)
    seconds, images = [], 0
    started = time.perf_counter()
    batch_started = started
    for image, _labels in dataset:
        images += int(image.shape[0])
        now = time.perf_counter()
        seconds.append(now - batch_started)
        batch_started = now
    wall = time.perf_counter() - started
    return {"records": records, "images": images, "wall": wall, "first": seconds[0], "rest": seconds[1:],
            "batch_size": int(train["batch_size"])}


# -------------------------------------------------------------------- report

def number(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) or value == 0 else f"{value:,.{digits}f}"


def table_row(step: str, run: dict, note: str = "") -> str:
    return (f"| {step} | {run['wall']:,.1f} | {number(run['stage_wall'])} | {number(run['peak_tree_mb'], 0)} | "
            f"{number(run['peak_top_mb'], 0)} | {number(run['peak_stage_mb'], 0)} | {number(run['peak_workers_mb'], 0)}"
            f" | {run['cpu']:,.0f} | {run['others']:.2f} | {note} |")


def preprocess_rates(rows: int, preprocess: dict) -> dict:
    """Images/s while the workers ran (wall, so slowed by whatever else ran);
    images per CPU second of the stage's parent and workers over that span
    (a core's rate, whatever else ran); and the cap the serial parent process
    puts on the stage (its CPU seconds per image)."""
    rate = rows / preprocess["workers_wall"]
    parent_per_image = preprocess["stage_cpu_with_workers"] / rows
    cpu_per_image = (preprocess["stage_cpu_with_workers"] + preprocess["workers_cpu"]) / rows
    return {"rate": rate, "per_core_wall": rate / cores(), "per_core_cpu": 1 / cpu_per_image,
            "parent_ms": parent_per_image * 1000, "cpu_ms": cpu_per_image * 1000,
            "parent_cap": 1 / parent_per_image if parent_per_image > 0 else float("inf"),
            "start_up": preprocess["wall"] - preprocess["workers_wall"]}


def extrapolation_lines(rows: int, runs: dict, epoch: dict, shards_bytes: int) -> list[str]:
    """Measured rates scaled to 16 cores and, for a reduced run, to all NIH rows; every line says it is not measured."""
    rates = preprocess_rates(rows, runs["preprocess"])
    at_16_cpu, at_16_wall = rates["per_core_cpu"] * TARGET_CORES, rates["per_core_wall"] * TARGET_CORES
    epoch_rate = epoch["images"] / epoch["wall"]
    lines = [
        f"extrapolated, not measured: preprocess at {TARGET_CORES} cores = {at_16_cpu:,.0f} images/s (all "
        f"{NIH_ROWS:,} NIH images in {NIH_ROWS / at_16_cpu / 60:,.0f} min), linear in cores from the measured "
        f"per-core rate {rates['per_core_cpu']:,.1f} images per CPU second ({rates['cpu_ms']:.1f} ms CPU per image, "
        f"parent and workers); from the wall rate instead, {rates['per_core_wall']:,.1f} per core on this shared "
        f"machine, {at_16_wall:,.0f} images/s ({NIH_ROWS / at_16_wall / 60:,.0f} min). Caveat: the stage's parent "
        f"process (records, shard writes, sha256) is serial; it used {rates['parent_ms']:.1f} ms CPU per image "
        f"(its pool start-up and end work included: an overstatement at small --rows), "
        f"which caps the stage near {rates['parent_cap']:,.0f} images/s whatever the cores"
        + (f", below the {TARGET_CORES}-core figure" if rates["parent_cap"] < at_16_cpu else ""),
        f"extrapolated, not measured: tf.data epoch at {TARGET_CORES} cores = "
        f"{epoch_rate * TARGET_CORES / cores():,.0f} images/s, linear in cores from the measured {epoch_rate:,.0f}",
        "GPU training epoch: not measured: no GPU (and no measured GPU step rate to assume); an epoch cannot be "
        f"faster than its input, {epoch['records'] / epoch_rate:,.0f} s for these {epoch['records']:,} train records "
        f"at the tf.data rate measured here",
    ]
    if rows < NIH_ROWS:
        scale = NIH_ROWS / rows
        preprocess_full = rates["start_up"] + NIH_ROWS / rates["rate"]
        linear = {name: runs[name]["wall"] * scale for name in ("build_root", "status_first", "ingest", "validate",
                                                                  "status_after")}
        epoch_full = epoch["first"] + (epoch["wall"] - epoch["first"]) * scale
        total = sum(linear.values()) + runs["status_second"]["wall"] * scale + preprocess_full + epoch_full
        lines.append(
            f"extrapolated, not measured: at all {NIH_ROWS:,} rows (x{scale:.1f}; preprocess and the epoch from their "
            f"rates, the rest linear in rows with start-up scaled too, so upper bounds): first hash "
            f"{linear['status_first'] / 60:,.1f} min, ingest {linear['ingest'] / 60:,.1f} min, validate "
            f"{linear['validate'] / 60:,.1f} min, preprocess {preprocess_full / 60:,.0f} min on {cores()} cores, "
            f"train epoch {epoch_full / 60:,.1f} min; data/tfrecords {shards_bytes * scale / 1e9:,.1f} GB (twice that "
            f"on disk with DVC's cache); the whole benchmark ~{total / 60:,.0f} min")
    return lines


def result_lines(args, root_info: dict, runs: dict, state: dict, shards: dict, epoch: dict) -> list[str]:
    rows = root_info["rows"]
    rates = preprocess_rates(rows, runs["preprocess"])
    rest = summary(epoch["rest"]) if epoch["rest"] else None
    return [
        f"input: {rows:,} of NIH's {NIH_ROWS:,} CSV rows, each a hard link to one of the {len(nih_pngs())} real 1024px "
        f"PNGs ({root_info['bytes'] / 1e9:,.1f} GB as files, {root_info['folders']} Kaggle folder(s)); default "
        f"params but ingest.source nih; {cores()} cores usable",
        f"how: psutil every {args.interval} s sums RSS over the dvc process and all its descendants (a page shared by "
        f"processes counts in each, so the tree sum overstates); wall = the whole command; stage cmd = the span "
        f"`python src/<stage>.py` was seen; CPU s = all its processes; others = cores other processes used meanwhile",
        "",
        "| step | wall s | stage cmd s | peak RSS tree MB | dvc MB | stage MB | workers MB | CPU s | others | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| build root: {rows:,} hard links | {root_info['seconds']:,.1f} | - | - | - | - | - | - | - | os.link |",
        table_row("dvc status, first hash of the root", runs["status_first"],
                  f"state db then holds {state['first']} paths"),
        table_row("dvc status, second hash", runs["status_second"], f"state db holds {state['second']} paths"),
        table_row("dvc repro --single-item ingest", runs["ingest"], "reads the CSV, stats every image"),
        table_row("dvc repro --single-item validate", runs["validate"], "Great Expectations suite"),
        table_row("dvc repro --single-item preprocess", runs["preprocess"],
                  f"{rates['rate']:,.1f} images/s while its workers ran ({runs['preprocess']['workers_wall']:,.1f} s)"),
        table_row("dvc status, no-op after the repro", runs["status_after"], "nothing changed"),
        f"| train epoch: tf.data + augmentation | {epoch['wall']:,.1f} | - | - | - | - | - | - | - | "
        f"{epoch['images'] / epoch['wall']:,.0f} images/s, in this process |",
        "",
        f"data/tfrecords: {shards['bytes']:,} bytes ({shards['bytes'] / 1e9:,.2f} GB) in {shards['shards']} shards, "
        f"{shards['bytes'] / shards['records'] / 1024:,.1f} KB per image ({shards['records']:,} records, "
        f"{shards['quarantined']} quarantined); DVC's cache holds a second copy",
        f"train epoch: {epoch['images']:,} images ({epoch['records']:,} train records) in batches of "
        f"{epoch['batch_size']}: {epoch['images'] / epoch['wall']:,.0f} images/s over the whole epoch; first batch "
        f"{epoch['first']:.2f} s (graph, interleave, shuffle buffer fill), then per batch "
        + (f"mean {rest['mean'] * 1000:.1f} ms, p90 {rest['p90'] * 1000:.1f} ms, max {rest['max'] * 1000:.1f} ms "
           f"(n={rest['n']})" if rest else "(one batch only)"),
        f"caveat: the {len(nih_pngs())} distinct PNGs stay in the page cache, so hashing and preprocess read no "
        f"disk; a real {NIH_ROWS:,}-image root (~45 GB) adds its disk's read time to the first hash and to preprocess",
        *extrapolation_lines(rows, runs, epoch, shards["bytes"]),
    ]


# ---------------------------------------------------------------------- main

def check_inputs(tmp_parent: Path, rows: int) -> list[Path]:
    pngs = nih_pngs()
    if not pngs or not (NIH_SUBSET / CSV_NAME).is_file():
        sys.exit(f"{SECTION}: no real NIH PNGs or {CSV_NAME} under {NIH_SUBSET} (this benchmark needs ../shared)")
    if not 1 <= rows <= NIH_ROWS:
        sys.exit(f"{SECTION}: --rows must be 1..{NIH_ROWS}, got {rows}")
    if tmp_parent.stat().st_dev != NIH_PNG_DIR.stat().st_dev:
        sys.exit(f"{SECTION}: {tmp_parent} is on another filesystem than {NIH_PNG_DIR}: hard links need the same "
                 f"one (pass --tmp-dir)")
    needed, free = rows * DISK_BYTES_PER_ROW + 2**30, shutil.disk_usage(tmp_parent).free
    if free < needed:
        sys.exit(f"{SECTION}: {tmp_parent} has {free / 1e9:.1f} GB free; {rows:,} rows need about "
                 f"{needed / 1e9:.1f} GB")
    return pngs


def rehearse(work: Path, pngs: list[Path], args) -> tuple[dict, dict, dict, dict, dict]:
    root, project = work / "nih", work / "project"
    root_info = build_root(root, pngs, args.rows)
    print(f"{SECTION}: root of {root_info['rows']:,} links in {root_info['seconds']:.1f} s", flush=True)
    params = make_project(project, root)
    runs = {"build_root": {"wall": root_info["seconds"]}}
    state = {}
    for name in ("status_first", "status_second"):
        runs[name] = run_measured(["dvc", "status"], project, args.interval)
        state[name.removeprefix("status_")] = dvc_state_entries(Path(os.environ["DVC_SITE_CACHE_DIR"]))
        print(f"{SECTION}: {name} {runs[name]['wall']:.1f} s", flush=True)
    for stage in STAGES:
        runs[stage] = run_measured(["dvc", "repro", "--single-item", stage], project, args.interval, stage)
        print(f"{SECTION}: {stage} {runs[stage]['wall']:.1f} s (stage cmd {runs[stage]['stage_wall']:.1f} s), peak "
              f"tree RSS {runs[stage]['peak_tree_mb']:.0f} MB", flush=True)
    runs["status_after"] = run_measured(["dvc", "status"], project, args.interval)
    tfrecords = project / params["paths"]["tfrecords"]
    index = json.loads((tfrecords / "index.json").read_text())
    shards = {"bytes": folder_bytes(tfrecords), "shards": len(index["shards"]), "quarantined": index["quarantined"],
              "records": sum(s["records"] for s in index["shards"])}
    epoch = train_epoch(tfrecords, params)
    print(f"{SECTION}: train epoch {epoch['wall']:.1f} s", flush=True)
    return root_info, runs, state, shards, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=NIH_ROWS, help=f"first N CSV rows (default all {NIH_ROWS:,})")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the root and project go; the filesystem of ../shared (default: the system tmp)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples (default 0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the root and the project (their path is printed)")
    add_output_arguments(parser)
    args = parser.parse_args()
    pngs = check_inputs(args.tmp_dir, args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench_full_scale.", dir=args.tmp_dir))
    # DVC keeps its state database (the hashes of the root's files) in a site cache, /var/tmp/dvc by default,
    # where it would outlive the project: here it goes and is removed with the rest
    os.environ["DVC_SITE_CACHE_DIR"] = str(work / "dvc-site-cache")
    try:
        root_info, runs, state, shards, epoch = rehearse(work, pngs, args)
    finally:
        if args.keep:
            print(f"{SECTION}: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    title = (f"bench_full_scale: NIH rehearsal, {root_info['rows']:,} rows through dvc repro "
             f"(ingest, validate, preprocess) and one tf.data epoch")
    report(args, SECTION, title, result_lines(args, root_info, runs, state, shards, epoch))


if __name__ == "__main__":
    main()
