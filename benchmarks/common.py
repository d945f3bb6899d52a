"""What every benchmark script shares: the machine line, timing, RESULTS.md sections."""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nEach section is written by its script in `benchmarks/`; rerun the script "
          "to update it. Numbers depend on the machine and on what else it was running.\n")


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {cores()} cores usable, Python {platform.python_version()}, {platform.system()}"


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def update_results(section: str, body: str) -> None:
    """Replace one benchmark's section of RESULTS.md (create the file if needed), keep the rest."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = RESULTS.read_text() if RESULTS.is_file() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def results_body(title: str, command: str, lines: list[str], note: str = "") -> str:
    return "\n".join([
        f"## {title}", "",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- date: {now()}",
        *([f"- note: {note}"] if note else []),
        "", "```", *lines, "```",
    ])


def add_output_arguments(parser) -> None:
    """--no-write and --note, which report() reads."""
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--note", default="", help="a line for RESULTS.md, e.g. what else the machine ran")


def report(args, section: str, title: str, lines: list[str], note: str = "") -> None:
    """Print the result lines and, unless --no-write, put them into RESULTS.md's
    `section`, with the command line that gave them and `note` beside --note's."""
    print("\n".join(lines))
    if not args.no_write:
        command = " ".join([f".venv/bin/python benchmarks/{section}.py", *sys.argv[1:]])
        update_results(section, results_body(title, command, lines, "; ".join(n for n in (note, args.note) if n)))
        print("wrote benchmarks/RESULTS.md")
