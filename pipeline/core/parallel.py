"""An ordered, memory-bounded parallel map over worker processes.

Results come back in input order (so outputs are byte-identical whatever the
worker count) and at most `window` tasks are in flight at once (so memory
stays flat however long the input is). Executor.map and Pool.imap give the
order but queue every task and hold every finished result; Pool.map over
fixed batches bounds memory but makes each batch wait for its slowest image.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Chunks in flight per worker: enough to hide the round trip, few enough that
# only a handful of decoded images exist at any time.
CHUNKS_IN_FLIGHT_PER_WORKER = 3


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


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    chunk_size: int = 1,
    window: int | None = None,
) -> Iterator[R]:
    """Yield function(item) for each item, in order, using `workers` processes.

    Items travel to the workers `chunk_size` at a time (fewer round trips for
    small tasks); at most `window` chunks are in flight. `function` must be
    importable (defined at module level), and its module light: every worker
    imports it. With workers <= 1 it runs in this process. A worker that
    dies (killed, out of memory) raises BrokenProcessPool here rather than
    hanging.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    window = window or workers * CHUNKS_IN_FLIGHT_PER_WORKER
    # spawn, not fork: the parent may hold TensorFlow or OpenCV threads that a
    # forked child would inherit mid-lock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=single_threaded_worker) as pool:
        in_flight: deque = deque()
        try:
            for chunk in _chunks(items, chunk_size):
                if len(in_flight) >= window:
                    yield from in_flight.popleft().result()
                in_flight.append(pool.submit(_apply_to_chunk, function, chunk))
            while in_flight:
                yield from in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()
