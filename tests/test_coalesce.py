"""The worker's coalescing hold, driven by a fake queue and a fake clock (no real waiting)."""
from __future__ import annotations

from reconciler.agent.coalesce import fold_burst


class Fake:
    """A queue that receives ``arrivals[i]`` items during the i-th wait; each wait moves the clock."""

    def __init__(self, arrivals, stop_at=None):
        self.arrivals = list(arrivals)
        self.queued = 1             # the event that woke the worker
        self.now = 0.0
        self.waits: list[float] = []
        self.stop_at = stop_at

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        if self.arrivals:
            self.queued += self.arrivals.pop(0)
        return self.stop_at is not None and len(self.waits) >= self.stop_at

    def clock(self) -> float:
        return self.now


def test_nothing_more_arriving_ends_the_hold_after_one_step():
    f = Fake([0, 5, 5])
    assert fold_burst(lambda: f.queued, f.wait, f.clock, 0.002, 0.05) == 1
    assert f.waits == [0.002]


def test_the_hold_goes_on_while_the_queue_grows_and_ends_at_the_first_quiet_step():
    f = Fake([3, 2, 7, 0, 9])
    assert fold_burst(lambda: f.queued, f.wait, f.clock, 0.002, 0.05) == 4
    assert f.queued == 13           # the three growing steps and the quiet one folded in; the 9 is not


def test_an_endless_storm_is_held_at_most_the_cap():
    f = Fake([1] * 1000)
    waits = fold_burst(lambda: f.queued, f.wait, f.clock, 0.002, 0.05)
    assert waits == 5 and abs(f.now - 0.05) < 1e-9


def test_each_growing_wait_doubles_the_next_up_to_what_is_left_of_the_cap():
    # Each wait is a wake-up of the worker: doubling keeps a long burst to a few of them.
    f = Fake([1] * 1000)
    fold_burst(lambda: f.queued, f.wait, f.clock, 0.002, 0.05)
    assert [round(w, 6) for w in f.waits] == [0.002, 0.004, 0.008, 0.016, 0.02]
    f = Fake([4, 4, 0, 4])
    assert fold_burst(lambda: f.queued, f.wait, f.clock, 0.002, 0.05) == 3
    assert [round(w, 6) for w in f.waits] == [0.002, 0.004, 0.008]   # the quiet wait ends it


def test_a_stop_ends_the_hold_at_once():
    f = Fake([1] * 1000, stop_at=3)
    assert fold_burst(lambda: f.queued, f.wait, f.clock, 0.002, 0.05) == 3
