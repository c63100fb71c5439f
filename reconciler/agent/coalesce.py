"""How long the worker lets a burst of events land before it runs a cycle.

A lone event is not kept waiting: the worker runs its cycle at once (the
caller decides that: no wait unless the previous wake-up was less than
``burst_window`` ago).  Once events keep arriving, each cycle costs a fixed
price (the plan, the metrics, subnet.env's check, the log decision) besides
the events it folds in, so the worker waits ``step`` and keeps waiting as
long as the queue grew during the last wait: a rolling restart of 5,000
leases then folds into a few dozen cycles instead of hundreds.  ``cap``
bounds the hold, so an event in a storm reaches the kernel at most ``cap``
later than without coalescing (docs/incremental.md, "Storms").
"""
from __future__ import annotations

from typing import Callable

__all__ = ["fold_burst"]


def fold_burst(queued: Callable[[], int], wait: Callable[[float], bool], clock: Callable[[], float],
               step: float, cap: float) -> int:
    """Wait in ``step``s while ``queued()`` keeps growing, for at most ``cap`` in all.

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
        if now_queued == seen or clock() >= deadline:
            return waits
        seen = now_queued
