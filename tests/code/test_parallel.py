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
