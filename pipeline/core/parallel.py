"""An ordered, memory-bounded parallel map over worker processes that survives their death.

Results come back in input order (so outputs are byte-identical whatever the
worker count) and at most `window` tasks are in flight at once (so memory
stays flat however long the input is). Executor.map and Pool.imap give the
order but queue every task and hold every finished result; Pool.map over
fixed batches bounds memory but makes each batch wait for its slowest image.

A worker that dies (killed, out of memory, a crash inside a C decoder) takes
its pool down, and the pool cannot say which item killed it. With
`on_worker_death`, the items that were in flight are run again one at a
time in a fresh pool: an item that kills its worker twice on its own is the
culprit and gets on_worker_death(item, reason) as its result; the others
(bystanders, or the victims of a one-off kill) get their real results.
"""
from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Chunks in flight per worker: enough to hide the round trip, few enough that
# only a handful of decoded images exist at any time.
CHUNKS_IN_FLIGHT_PER_WORKER = 3
# Runs of an item alone before it is blamed for its worker's death: a second
# death rules out a one-off kill from outside.
DEATHS_TO_BLAME = 2
JOIN_TIMEOUT_S = 5.0
# Items in a row blamed for their worker's death before the workers, not the items, are blamed.
BLAMED_IN_A_ROW = 3


def single_threaded_worker() -> None:
    """Worker initialiser: one OpenCV thread per process, the pool already uses the cores."""
    import cv2

    cv2.setNumThreads(1)


def _apply_to_chunk(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def death_reason(exit_codes: list[int]) -> str:
    """Why workers died, from their exit codes (negative: the signal that killed them)."""
    reasons = []
    for code in exit_codes:
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            hint = (" (kill -9, or the kernel's out-of-memory killer)" if -code == signal.SIGKILL
                    else " (a crash in a decoder)" if -code in (signal.SIGSEGV, signal.SIGBUS) else "")
            reasons.append(f"killed by {name}{hint}")
        else:
            reasons.append(f"exited with status {code}")
    return "; ".join(dict.fromkeys(reasons)) or "terminated abruptly"


class WorkerPool:
    """A spawn-context process pool that is replaced when a worker dies."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.processes: dict = {}
        self.start()

    def start(self) -> None:
        # spawn, not fork: the parent may hold TensorFlow or OpenCV threads that a
        # forked child would inherit mid-lock.
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=single_threaded_worker)
        self.processes = {}

    def submit(self, function: Callable[[T], R], chunk: list[T]) -> Future:
        future = self.pool.submit(_apply_to_chunk, function, chunk)
        # Kept to read the dead worker's exit code: the executor forgets its processes once broken.
        self.processes.update(getattr(self.pool, "_processes", None) or {})
        return future

    def death(self) -> str:
        """Why the pool broke: its dead workers' exit codes. The executor ends the
        surviving workers with SIGTERM when one dies, so those are not the cause."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        # Polled, not joined once: the executor's own thread may be reaping the
        # same process, and until it records the code a join here sees None.
        while any(p.exitcode is None for p in self.processes.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        codes = [process.exitcode for process in self.processes.values() if process.exitcode not in (None, 0)]
        return death_reason([code for code in codes if code != -signal.SIGTERM] or codes)

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _one_at_a_time(pool: WorkerPool, function: Callable[[T], R], items: list[T],
                   on_worker_death: Callable[[T, str], R]) -> Iterator[R]:
    """Each item alone in the pool; an item whose worker dies DEATHS_TO_BLAME times gets on_worker_death.
    When BLAMED_IN_A_ROW items in a row are blamed, the workers die whatever they are given (they
    cannot start, memory is gone): BrokenProcessPool, rather than quarantining every item."""
    blamed_in_a_row = 0
    for item in items:
        for attempt in range(1, DEATHS_TO_BLAME + 1):
            try:
                result = pool.submit(function, [item]).result()[0]
            except BrokenProcessPool:
                reason = pool.death()
                pool.restart()
                if attempt < DEATHS_TO_BLAME:
                    continue
                blamed_in_a_row += 1
                if blamed_in_a_row == BLAMED_IN_A_ROW:
                    raise BrokenProcessPool(f"{BLAMED_IN_A_ROW} items in a row killed their worker process each "
                                            f"time, so the workers die whatever they run: {reason}") from None
                yield on_worker_death(item, f"its worker process died each time it was decoded ({reason})")
            else:
                blamed_in_a_row = 0
                yield result
            break


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    chunk_size: int = 1,
    window: int | None = None,
    on_worker_death: Callable[[T, str], R] | None = None,
    label: str = "parallel",
) -> Iterator[R]:
    """Yield function(item) for each item, in order, using `workers` processes.

    Items travel to the workers `chunk_size` at a time (fewer round trips for
    small tasks); at most `window` chunks are in flight. `function` must be
    importable (defined at module level), and its module light: every worker
    imports it. With workers <= 1 it runs in this process. A worker that
    dies raises BrokenProcessPool here rather than hanging, unless
    `on_worker_death` is given (module docstring); `label` names the caller
    in the line that reports a death.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    window = window or workers * CHUNKS_IN_FLIGHT_PER_WORKER
    pool = WorkerPool(workers)
    in_flight: deque[tuple[list[T], Future]] = deque()
    try:
        chunks = _chunks(items, chunk_size)
        while True:
            while len(in_flight) < window and (chunk := next(chunks, None)) is not None:
                in_flight.append((chunk, pool.submit(function, chunk)))
            if not in_flight:
                return
            chunk, future = in_flight.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                if on_worker_death is None:
                    raise
                # The dead worker's items and every chunk in flight beside them, in order.
                pending = [item for waiting, _ in [(chunk, future), *in_flight] for item in waiting]
                in_flight.clear()
                print(f"{label}: a worker process died ({pool.death()}); its {len(pending)} items in flight run "
                      f"again one at a time in a fresh pool", file=sys.stderr)
                pool.restart()
                results = _one_at_a_time(pool, function, pending, on_worker_death)
            yield from results
    finally:
        for _, future in in_flight:
            future.cancel()
        pool.close()
