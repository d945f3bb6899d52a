"""ordered_map: input order kept and a bounded number of tasks in flight."""
import math

import pytest

from pipeline.core.parallel import ordered_map


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_input_order(workers):
    items = list(range(200, 0, -1))
    assert list(ordered_map(math.factorial, items, workers)) == [math.factorial(i) for i in items]


def test_input_is_consumed_at_most_a_window_ahead():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    results = ordered_map(math.isqrt, items(), workers=2, window=6)
    assert next(results) == 0
    assert len(pulled) <= 7  # the window, plus the one waiting to be submitted
    for _ in range(10):
        next(results)
    assert len(pulled) <= 17
    results.close()


def test_a_failing_task_raises_its_error():
    with pytest.raises(ValueError):
        list(ordered_map(math.isqrt, [4, 9, -1, 16], workers=2))


def die_on_seven(item: int) -> int:
    """Kills its own worker process on 7: a real crash, as a decoder's SIGSEGV or the OOM killer would."""
    if item == 7:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return item * 10


def test_a_dead_worker_without_a_handler_raises():
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        list(ordered_map(die_on_seven, range(20), workers=2))


def test_the_item_that_kills_its_worker_is_blamed_and_the_rest_come_back_in_order(capsys):
    results = list(ordered_map(die_on_seven, range(40), workers=2, chunk_size=4,
                               on_worker_death=lambda item, reason: (item, reason), label="test"))
    assert results[:7] == [i * 10 for i in range(7)] and results[8:] == [i * 10 for i in range(8, 40)]
    item, reason = results[7]
    assert item == 7
    assert reason == ("its worker process died each time it was decoded (killed by SIGKILL (kill -9, or the "
                      "kernel's out-of-memory killer))")
    assert "test: a worker process died (killed by SIGKILL" in capsys.readouterr().err


def test_death_reasons_name_the_signal_or_status():
    from pipeline.core.parallel import death_reason

    assert death_reason([-11]) == "killed by SIGSEGV (a crash in a decoder)"
    assert death_reason([3, 3]) == "exited with status 3"
    assert death_reason([]) == "terminated abruptly"


def die_always(item: int) -> int:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return item


def test_workers_that_die_whatever_they_run_stop_the_map_instead_of_blaming_every_item():
    from concurrent.futures.process import BrokenProcessPool

    blamed = []
    with pytest.raises(BrokenProcessPool, match="3 items in a row killed their worker process each time"):
        for _ in ordered_map(die_always, range(100), workers=2,
                             on_worker_death=lambda item, reason: blamed.append(item) or item):
            pass
    assert blamed == [0, 1]
