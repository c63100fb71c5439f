"""The agent's dealings with Python's memory management: when the heap is given back to the
system, and when the cyclic garbage collector is kept out of the way (docs/memory.md)."""
from __future__ import annotations

import ctypes
import gc
from contextlib import contextmanager
from typing import Iterator

__all__ = ["collector_paused", "trim"]


def trim() -> None:
    """After a large cycle: give its memory back, and take the long-lived state out of the GC's walks.

    A cold start's 15,000 changes, their results and the dump buffers are
    freed afterwards, but glibc keeps the freed heap mapped, so the agent's
    RSS would stay at the cold start's peak for its whole life:
    ``malloc_trim`` returns it.  ``gc.freeze`` moves what survives (the lease
    index, the desired state: tens of thousands of objects that live as long
    as the agent) out of the cyclic collector's generations, which would
    otherwise walk them all now and then in the middle of a cycle
    (docs/incremental.md).  A few ms, only after big cycles."""
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim this way
        pass


@contextmanager
def collector_paused(active: bool = True) -> Iterator[None]:
    """No cyclic garbage collection inside the block (when ``active``).

    For work that makes many objects at once, none of them garbage while it runs: a full
    cycle's dump (15,000 objects at 5,000 nodes, living until the plan is made, then gone by
    reference counting) and the fold of a listing or a burst of events (objects that live on).
    Otherwise every 700 allocations start a young collection that walks them, and every tenth
    an older one: about a tenth of a no-op resync's time (docs/memory.md).  Nothing in such a
    block makes cyclic garbage that must go at once; whatever it leaves is collected as usual
    afterwards."""
    if not active or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
