"""How long the worker lets a burst of events land before it runs a cycle.

A lone event is not kept waiting: the worker runs its cycle at once (the
caller decides that: no wait unless the previous wake-up was less than
``burst_window`` ago).  Once events keep arriving, each cycle costs a fixed
price (the plan, the metrics, subnet.env's check, the log decision) besides
the events it folds in, so the worker waits ``step`` and keeps waiting, twice
as long each time, as long as the queue grew during the last wait: a rolling
restart of 5,000 leases then folds into a few dozen cycles instead of hundreds.  ``cap``
bounds the hold, so an event in a storm reaches the kernel at most ``cap``
later than without coalescing (docs/incremental.md, "Storms").
"""
from __future__ import annotations

from typing import Callable

__all__ = ["fold_burst"]


def fold_burst(queued: Callable[[], int], wait: Callable[[float], bool], clock: Callable[[], float],
               step: float, cap: float) -> int:
    """Wait while ``queued()`` keeps growing, for at most ``cap`` in all: first ``step``, then
    twice the previous wait after each wait in which the queue grew.

    The waits double because each one is a wake-up of the worker thread, and on this machine a
    wake-up costs as much as folding in a few events: in a storm of 5,000 re-puts, 2 ms steps
    were 1,963 waits for 491 holds, doubling 792-815 for 269-273.  A hold still ends at the
    first wait in which nothing arrived, so it lasts at most twice as long as the burst it
    waits for, and never more than ``cap``.

    ``wait(seconds)`` returns True when the agent is stopping (``stop.wait``), which ends
    the hold at once.  Returns the number of waits (for the tests)."""
    deadline = clock() + cap
    waits = 0
    seen = queued()
    while True:
        waits += 1
        if wait(step):
            return waits
        now_queued = queued()
        now = clock()
        if now_queued == seen or now >= deadline:
            return waits
        seen = now_queued
        step = min(step * 2, deadline - now)
