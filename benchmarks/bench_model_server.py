"""Benchmark: per-film latency through MLflow's model server against the same model in-process.

A DenseNet121 at 320px (random weights: they do not change the cost) is
registered as the champion in a temporary SQLite store, as the evaluate stage
registers it, and served by `cxr serve` (`mlflow models serve`) on 127.0.0.1.
The same --films real NIH PNGs from ../shared are then scored, taking turns
for --rounds rounds, 1 and 16 films per call:
  (a) in-process, preprocessed: load_model(...).predict on films already read
      and preprocessed (the model's own cost);
  (b) in-process, from the file: model.read(path) then predict, what
      `cxr predict` does (the model plus reading, checking and decoding the film);
  (c) the server: the films' bytes base64-encoded into one dataframe_split JSON
      request per call, posted, the answer parsed (client encoding included).
Per-film latency is a call's wall time / its films. The server's peak memory
(resident set of the process serving the model, and of the whole tree with
the `mlflow models serve` launcher, sampled every 50 ms) is set beside this
process's after it loaded the same model.

Target: the server adds at most the decode and HTTP cost, i.e. (c) <= 1.2 x
(b) on the means at both sizes: (b) already decodes, so what (c) adds is
base64, JSON and HTTP on ~0.35 MB per film, a few ms against a DenseNet121
pass of about 100 ms or more per film on these machines; 20% leaves room for
a shared machine's noise and nothing for a second copy of the work. Memory:
the serving process's peak <= 1.5 x this process's resident set with the
model loaded (it holds one model plus a request's films and their JSON).

    .venv/bin/python benchmarks/bench_model_server.py [--films 48] [--rounds 3]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from common import add_output_arguments, contention_line, describe, interleaved, nih_pngs, report, summary

SECTION = "bench_model_server"
NAME = "chestxray-bench"
SIZE = 320
BATCHES = (1, 16)
START_TIMEOUT_S = 300
LATENCY_TARGET = 1.2
MEMORY_TARGET = 1.5


def register_champion(store: str, artifacts: Path) -> None:
    """A DenseNet121 as version 1 of NAME with the champion alias, as the evaluate stage registers it."""
    import keras
    import mlflow

    from pipeline.core.labels import FINDINGS
    from pipeline.model.architectures import build_model
    from pipeline.model.registry import register_model, registry_model_metadata

    keras.utils.set_random_seed(0)
    mlflow.set_tracking_uri(store)
    experiment_id = mlflow.create_experiment("bench", artifact_location=artifacts.as_uri())
    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": SIZE, "fit": "crop"},
                                       {"mean_auc": 0.5, "auc": {}},
                                       serving={"max_films_per_request": max(BATCHES), "max_film_mb": 32})
    first = {"promote": True, "rule": "first", "reasons": ["benchmark"], "champion_version": None,
             "comparison": None}
    with mlflow.start_run(experiment_id=experiment_id):
        register_model(mlflow, build_model("densenet121", SIZE, "none"), NAME, metadata, {}, first)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(store: str, port: int, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "cxr"), "serve", "--model", f"models:/{NAME}@champion",
               "--tracking-uri", store, "--port", str(port)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            sys.exit(f"bench_model_server: cxr serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return process
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"bench_model_server: the server did not answer in {START_TIMEOUT_S}s")
            time.sleep(0.5)


class PeakMemory:
    """The highest resident set of a process tree, and of its largest process
    (the one serving the model), sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.05):
        import psutil

        self.process, self.every_s, self._stop = psutil.Process(pid), every_s, threading.Event()
        self.tree_peak, self.largest_peak = 0, 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            sizes = []
            for member in [self.process, *self.process.children(recursive=True)]:
                try:
                    sizes.append(member.memory_info().rss)
                except psutil.Error:
                    pass
            self.tree_peak = max(self.tree_peak, sum(sizes))
            self.largest_peak = max(self.largest_peak, max(sizes, default=0))
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def post(url: str, films: list[bytes]) -> list[dict]:
    body = json.dumps({"dataframe_split": {"columns": ["image"],
                                           "data": [[base64.b64encode(film).decode("ascii")] for film in films]}})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())["predictions"]
    errors = [row["error"] for row in answer if row["error"]]
    if errors:
        sys.exit(f"bench_model_server: the server refused a film: {errors[0]}")
    return answer


def per_film_latencies(call, items: list, batch: int) -> list[float]:
    """Each call's wall time / its films, calling `call` on consecutive batches of `items`."""
    latencies = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        began = time.perf_counter()
        call(chunk)
        latencies.append((time.perf_counter() - began) / len(chunk))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=48, help="real NIH PNGs scored per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    add_output_arguments(parser)
    args = parser.parse_args()
    paths = nih_pngs()[:args.films]
    if len(paths) < args.films:
        sys.exit("bench_model_server: not enough real NIH PNGs in ../shared/data/nih-subset")
    import numpy as np
    import psutil

    from pipeline.serve.predict import load_model

    with tempfile.TemporaryDirectory(prefix="bench_server.") as tmp:
        tmp = Path(tmp)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        register_champion(store, tmp / "artifacts")
        port = free_port()
        server = start_server(store, port, tmp / "serve.log")
        memory = PeakMemory(server.pid)
        try:
            url = f"http://127.0.0.1:{port}/invocations"
            model = load_model(f"models:/{NAME}@champion", tracking_uri=store)
            own_rss = psutil.Process().memory_info().rss
            films = [path.read_bytes() for path in paths]
            pixels = [model.read(path).pixels for path in paths]
            for batch in BATCHES:  # warm-up: graph tracing on both sides, at both sizes
                model.predict(np.stack(pixels[:batch]), batch_size=batch)
                post(url, films[:batch])
            same = np.abs(np.array([[row[f] for f in model.findings] for row in post(url, films[:4])])
                          - model.predict(np.stack(pixels[:4]))).max()
            variants = {}
            for batch in BATCHES:
                variants[f"in-process, preprocessed, {batch}/call"] = (
                    lambda b=batch: per_film_latencies(lambda chunk: model.predict(np.stack(chunk), batch_size=b),
                                                       pixels, b))
                variants[f"in-process, from the file, {batch}/call"] = (
                    lambda b=batch: per_film_latencies(
                        lambda chunk: model.predict(np.stack([model.read(p).pixels for p in chunk]), batch_size=b),
                        paths, b))
                variants[f"server, {batch}/request"] = (
                    lambda b=batch: per_film_latencies(lambda chunk: post(url, chunk), films, b))
            busy: dict[str, list[float]] = {}
            rounds = interleaved(variants, args.rounds, log=SECTION, contention=busy)
        finally:
            memory.stop()
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)

    latency = {name: [v for per_round in values for v in per_round] for name, values in rounds.items()}
    lines = [f"densenet121 at {SIZE}px (registered as the evaluate stage does), {args.films} real NIH PNGs "
             f"(~{sum(len(f) for f in films) / len(films) / 1e6:.2f} MB each), {args.rounds} interleaved rounds; "
             "per-film latency = a call's wall time / its films"]
    verdicts = []
    for batch in BATCHES:
        preprocessed = latency[f"in-process, preprocessed, {batch}/call"]
        from_file = latency[f"in-process, from the file, {batch}/call"]
        served = latency[f"server, {batch}/request"]
        lines += [f"{batch} film(s) per call:",
                  f"  (a) in-process, preprocessed: {describe(preprocessed)}",
                  f"  (b) in-process, from the file (cxr predict's path): {describe(from_file)}",
                  f"  (c) server, base64 JSON over HTTP: {describe(served)}"]
        mean = {key: summary(values)["mean"] for key, values in (("a", preprocessed), ("b", from_file),
                                                                 ("c", served))}
        ratio = mean["c"] / mean["b"]
        lines.append(f"  (c) / (b) on the means: {ratio:.2f} x; (c) / (a) {mean['c'] / mean['a']:.2f} x; reading and "
                     f"decoding a film: {(mean['b'] - mean['a']) * 1000:.0f} ms; what the server adds beyond it: "
                     f"{(mean['c'] - mean['b']) * 1000:.0f} ms a film")
        verdicts.append(ratio <= LATENCY_TARGET)
    memory_ratio = memory.largest_peak / own_rss
    lines += [
        f"server peak resident memory: {memory.largest_peak / 2**20:.0f} MiB in the process serving the model "
        f"({memory.tree_peak / 2**20:.0f} MiB with the `mlflow models serve` launcher above it); this process with "
        f"the same model loaded: {own_rss / 2**20:.0f} MiB; ratio {memory_ratio:.2f} x",
        contention_line(busy),
        f"server and in-process probabilities on the same 4 films: largest difference {same:.1e}",
        f"target (c) <= {LATENCY_TARGET} x (b) on the means at 1 and 16 films: "
        f"{'meets' if all(verdicts) else 'misses'}; server memory <= {MEMORY_TARGET} x: "
        f"{'meets' if memory_ratio <= MEMORY_TARGET else 'misses'}",
    ]
    report(args, SECTION, "bench_model_server: raw films through MLflow's model server against in-process predict",
           lines)


if __name__ == "__main__":
    main()
