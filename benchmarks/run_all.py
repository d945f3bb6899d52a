"""`make bench`: rerun every benchmark at the current commit and rewrite benchmarks/RESULTS.md.

Every benchmarks/bench_*.py (found by glob, so a new one is picked up) runs
as a subprocess with its default sizes, one after the other, and writes its
section into a file this script gives it (BENCH_SECTION_FILE, see
common.report). RESULTS.md is then written from scratch, atomically (a
temporary file, then os.replace), and only when every benchmark succeeded: a
failing one ends the run with one line naming it and leaves RESULTS.md as it
was. The header records the commit (with "(uncommitted changes)" when
tracked files differ from it), the date, the machine, the total wall time,
and how much CPU other processes took during each benchmark (/proc/stat
minus the benchmark's own CPU time), since the machine may be shared.

    python benchmarks/run_all.py [--note TEXT] [--only bench_gradcam ...] [--out PATH] [--keep-going]

--note (or the BENCH_NOTE environment variable, e.g. `make bench
BENCH_NOTE="other agents were running tests"`) adds a line to the header.
With --only, nothing is written unless --out names a file.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, PROJECT_ROOT, RESULTS, SECTION_FILE_ENV, cores, machine, now

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def discover() -> list[Path]:
    return sorted(BENCH_DIR.glob("bench_*.py"))


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit_line() -> str:
    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    changed = [line for line in git("status", "--porcelain").splitlines() if line and not line.startswith("??")]
    return commit + (" (uncommitted changes)" if changed else "")


def versions() -> str:
    found = []
    for name in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "opencv-python-headless", "mlflow"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, steal) clock ticks of all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def others_line(before, after, own_cpu: float, wall: float) -> str:
    """How much of the machine other processes used while a benchmark ran."""
    if before is None or after is None or wall <= 0:
        return f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}"
    busy = (after[0] - before[0]) / TICKS
    steal = (after[1] - before[1]) / TICKS
    others = max(0.0, busy - own_cpu)
    return (f"other processes used {others / wall:.2f} of the {cores()} cores on average "
            f"(this benchmark {own_cpu / wall:.2f}; CPU steal {steal / wall:.2f}); "
            f"load average (1 min) at the end {os.getloadavg()[0]:.1f}")


# Benchmarks that take longer than --timeout by design: seconds they may run.
LONG_RUNNING_S = {"bench_full_scale": 3 * 3600,  # 112,120 rows through three stages on 2 cores: ~1 hour
                  "bench_gap_flags": 3600}  # 1,000 null test sets x 1,000 shuffles: ~15 min on 2 idle cores


def run_one(script: Path, section_file: Path, timeout: float) -> dict:
    env = {**os.environ, SECTION_FILE_ENV: str(section_file), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::DeprecationWarning")}
    print(f"\n===== {script.name} ({now()}) =====", flush=True)
    ticks, cpu, start = cpu_ticks(), children_cpu(), time.perf_counter()
    try:
        code = subprocess.run([sys.executable, str(script.relative_to(PROJECT_ROOT))], cwd=PROJECT_ROOT, env=env,
                              timeout=timeout).returncode
        why = f"exit code {code}" if code else ""
    except subprocess.TimeoutExpired:
        why = f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - start
    result = {"script": script, "wall": wall, "failed": why,
              "others": others_line(ticks, cpu_ticks(), children_cpu() - cpu, wall)}
    if not why and not section_file.is_file():
        result["failed"] = "exited 0 but wrote no section (it must report through common.report)"
    print(f"===== {script.name}: {'FAILED, ' + result['failed'] if result['failed'] else 'ok'}, {wall:.0f} s; "
          f"{result['others']}", flush=True)
    return result


def section(result: dict, section_file: Path) -> str:
    """The benchmark's own section, with run_all's measurements after its title."""
    text = section_file.read_text().strip()
    title, _, rest = text.partition("\n")
    extra = f"- wall time under `make bench`: {result['wall']:.0f} s; {result['others']}"
    return f"{title}\n\n{extra}\n{rest.lstrip(chr(10))}" if title.startswith("## ") else f"{extra}\n\n{text}"


def header(commit: str, started: str, total: float, results: list[dict], note: str, head_moved: str) -> str:
    walls = ", ".join(f"{r['script'].stem} {r['wall']:.0f} s" for r in results)
    lines = [
        "# Benchmark results", "",
        "Written by `make bench` (`python benchmarks/run_all.py`), which reran every `benchmarks/bench_*.py` "
        "below at one commit and rewrote this file from scratch. Rerun one by hand with its command (it prints; "
        "only `make bench` writes this file). Numbers depend on the machine and on what else it was running: "
        "each section says how much CPU other processes took meanwhile.", "",
        f"- commit: {commit}" + (f" ({head_moved})" if head_moved else ""),
        f"- date: {started}",
        f"- machine: {machine()}",
        f"- packages: {versions()}",
        f"- total wall time: {total / 60:.1f} min for {len(results)} benchmarks "
        f"({walls})",
        *([f"- note: {note}"] if note else []),
    ]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as handle:
        handle.write(text)
        temporary = Path(handle.name)
    try:
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default=os.environ.get("BENCH_NOTE", ""),
                        help="a line for the header, e.g. 'other processes were running' (default: $BENCH_NOTE)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks only (e.g. bench_gradcam)")
    parser.add_argument("--out", type=Path, help=f"where to write (default {RESULTS.relative_to(PROJECT_ROOT)}; "
                                                 f"with --only, nothing unless given)")
    parser.add_argument("--keep-going", action="store_true", help="run the rest after a failure (still no file)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark before it counts as failed")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()

    scripts = discover()
    if args.only:
        wanted = {name.removesuffix(".py") for name in args.only}
        unknown = wanted - {s.stem for s in scripts}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))} (have {', '.join(s.stem for s in scripts)})")
        scripts = [s for s in scripts if s.stem in wanted]
    if args.list:
        print("\n".join(str(s.relative_to(PROJECT_ROOT)) for s in scripts))
        return 0
    out = args.out if args.out else (None if args.only else RESULTS)

    commit, started, start = commit_line(), now(), time.perf_counter()
    head = git("rev-parse", "--short", "HEAD")
    print(f"make bench: {len(scripts)} benchmarks at {commit}: {', '.join(s.name for s in scripts)}", flush=True)
    results, sections = [], []
    with tempfile.TemporaryDirectory(prefix="bench_sections.") as tmp:
        for script in scripts:
            section_file = Path(tmp) / f"{script.stem}.md"
            result = run_one(script, section_file, max(args.timeout, LONG_RUNNING_S.get(script.stem, 0)))
            results.append(result)
            if result["failed"]:
                if not args.keep_going:
                    break
                continue
            sections.append(section(result, section_file))
    total = time.perf_counter() - start
    failed = [r for r in results if r["failed"]]
    if failed:
        names = "; ".join(f"benchmarks/{r['script'].name} ({r['failed']})" for r in failed)
        print(f"\nmake bench: FAILED: {names}; {out or 'nothing'} left unchanged", file=sys.stderr)
        return 1
    moved = git("rev-parse", "--short", "HEAD")
    head_moved = f"HEAD moved to {moved} during the run" if head and moved and moved != head else ""
    text = header(commit, started, total, results, args.note, head_moved) + "\n\n" + "\n\n".join(sections) + "\n"
    if out is None:
        print("\n" + text)
        print(f"make bench: {len(results)} benchmarks ok in {total / 60:.1f} min (not written: --only without --out)")
        return 0
    write_atomically(out, text)
    print(f"\nmake bench: {len(results)} benchmarks ok in {total / 60:.1f} min; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
