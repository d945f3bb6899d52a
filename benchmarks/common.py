"""What every benchmark script shares: quiet TensorFlow, the machine line,
timing, summary statistics, interleaved rounds, and its RESULTS.md section.

benchmarks/RESULTS.md is written only by `make bench` (benchmarks/run_all.py),
from scratch, with every benchmark rerun at one commit. run_all gives each
script a file for its section (the BENCH_SECTION_FILE environment variable,
or --section-file); a script run by hand prints its lines and leaves
RESULTS.md alone.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Before anything imports TensorFlow: no C++ info/warning lines, no oneDNN banner.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np

STARTED = time.perf_counter()
BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
NIH_PNG_DIR = SHARED_DATA / "nih-subset" / "images_001" / "images"
SECTION_FILE_ENV = "BENCH_SECTION_FILE"


def nih_pngs() -> list[Path]:
    """The real NIH 1024px PNGs of ../shared (300 of them), [] when ../shared is absent."""
    return sorted(NIH_PNG_DIR.glob("*.png"))


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{cpu_model()}, {cores()} cores usable, Python {platform.python_version()}, {platform.system()}"


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# ---------------------------------------------------------------- statistics

def summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, median, p90, min and max of `values` (p90 interpolated linearly)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values to summarise")
    return {"n": int(array.size), "mean": float(array.mean()), "median": float(np.median(array)),
            "p90": float(np.percentile(array, 90)), "min": float(array.min()), "max": float(array.max())}


def describe(values: Sequence[float], unit: str = "ms", scale: float = 1000.0, digits: int = 0) -> str:
    """'mean 85 ms, median 84, p90 90, max 95 (n=16)' for durations in seconds
    (scale 1000 -> ms); the tail (p90, max) next to the centre."""
    s = {k: v * scale if k != "n" else v for k, v in summary(values).items()}
    f = f"{{:.{digits}f}}"
    return (f"mean {f.format(s['mean'])} {unit}, median {f.format(s['median'])}, p90 {f.format(s['p90'])}, "
            f"max {f.format(s['max'])} (n={s['n']})")


def describe_rates(rates: Sequence[float], unit: str = "images/s", digits: int = 1) -> str:
    """'mean 158.1 images/s, worst 150.2, best 162.0 (n=3 rounds)': for rates the tail is the lowest."""
    s = summary(rates)
    f = f"{{:.{digits}f}}"
    return (f"mean {f.format(s['mean'])} {unit}, worst {f.format(s['min'])}, best {f.format(s['max'])} "
            f"(n={s['n']} rounds)")


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on this machine have used since boot (/proc/stat), None where unknown."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (fields + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process, its live descendants and its reaped children."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    try:
        import psutil
    except ImportError:
        times = os.times()
        return total + times.user + times.system
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, log: str = "",
                contention: dict[str, list[float]] | None = None) -> dict[str, list]:
    """Run every variant once per round, the order rotated each round (ABC,
    BCA, CAB, ...) so that neither a slow spell of this shared machine nor a
    position in the round lands on one variant only. Returns each variant's
    results, round by round; `contention` gets, per variant and run, the
    cores other processes used meanwhile (see contention_line)."""
    names = list(variants)
    results: dict[str, list] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            busy, own, started = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
            results[name].append(variants[name]())
            wall = time.perf_counter() - started
            after = machine_busy_seconds()
            others = (max(0.0, after - busy - (own_cpu_seconds() - own)) / wall
                      if busy is not None and after is not None and wall > 0 else float("nan"))
            if contention is not None:
                contention.setdefault(name, []).append(others)
            if log:
                print(f"{log} round {round_ + 1}/{rounds}: {name} {wall:.1f} s (other processes: {others:.2f} "
                      f"cores)", flush=True)
    return results


def contention_line(contention: dict[str, list[float]]) -> str:
    """What other processes took from this machine while each variant ran: a
    ratio between variants is only as good as these are alike."""
    parts = [f"{name} {', '.join(f'{c:.2f}' for c in values)}" for name, values in contention.items()]
    return f"other processes' CPU while each variant ran (cores of {cores()}, per round): " + "; ".join(parts)


# ------------------------------------------------------------------ reporting

def add_output_arguments(parser) -> None:
    """--note and --section-file, which report() reads (--no-write: accepted, the default)."""
    parser.add_argument("--note", default="", help="a line for the section, e.g. what else the machine ran")
    parser.add_argument("--section-file", default=os.environ.get(SECTION_FILE_ENV) or None,
                        help="write this benchmark's RESULTS.md section to this file (run_all.py sets it)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only (the default when run by hand; RESULTS.md is written by `make bench`)")


def shown_command() -> str:
    """This process's command line as someone would retype it from the project
    root, without the section file (a temporary path of run_all's)."""
    python = Path(sys.executable)
    try:
        python_text = str(python.relative_to(PROJECT_ROOT))
    except ValueError:
        python_text = "python"
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(PROJECT_ROOT))
    except ValueError:
        script_text = str(script)
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--section-file":
            skip = True
            continue
        if arg.startswith("--section-file="):
            continue
        args.append(arg if arg and all(c.isalnum() or c in "-_.:,=/" for c in arg) else repr(arg))
    return " ".join([python_text, script_text, *args])


def results_body(title: str, command: str, lines: list[str], note: str = "") -> str:
    return "\n".join([
        f"## {title}", "",
        f"- command: `{command}`",
        f"- finished: {now()}, {time.perf_counter() - STARTED:.0f} s wall for the whole script (imports included)",
        *([f"- note: {note}"] if note else []),
        "", "```", *lines, "```",
    ])


def write_section(body: str, section_file: str | None) -> bool:
    if not section_file:
        return False
    Path(section_file).write_text(body.rstrip() + "\n")
    return True


def update_results(section: str, body: str) -> None:
    """Kept for scripts written against the old interface: the section goes
    to run_all's section file; by hand, RESULTS.md is left alone."""
    if not write_section(body, os.environ.get(SECTION_FILE_ENV)):
        print(f"{section}: RESULTS.md left alone (it is rewritten whole by `make bench`)")


def report(args, section: str, title: str, lines: list[str], note: str = "") -> None:
    """Print the result lines; under run_all (or with --section-file) write
    them as this benchmark's section, with the command line that gave them."""
    print("\n".join(lines))
    notes = "; ".join(n for n in (note, getattr(args, "note", "")) if n)
    body = results_body(title, shown_command(), lines, notes)
    section_file = getattr(args, "section_file", None) or os.environ.get(SECTION_FILE_ENV)
    if write_section(body, section_file):
        print(f"{section}: section written to {section_file}")
    else:
        print(f"{section}: RESULTS.md left alone (`make bench` reruns every benchmark and rewrites it; "
              f"machine: {machine()})")
