"""What the agent's threads hand to the worker: typed items on two queues.

The watch thread, the etcd thread and the start-up queue lease items (one
event, a complete listing, a move of our own key); the kernel-events thread
queues batches of netlink notifications.  The worker alone takes them out,
at the start of a cycle (``cycle.py``).  Each item says what it is by its
type and names its fields, so the worker never reads a tuple by position.

Appending to and popping from a ``deque`` are atomic, so the queues need no
lock; ``listed`` is only ever set, never cleared.
"""
from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Iterator, NamedTuple, Union

from reconciler.core.leases import RawKV

if TYPE_CHECKING:
    from reconciler.etcd.rpc import WatchEvent

__all__ = ["Inbox", "KernelBatch", "LeaseEvent", "LeaseItem", "Listing", "Pin"]


# NamedTuples rather than frozen dataclasses: one is made per etcd event, and a tuple is the
# cheapest immutable value Python makes.
class LeaseEvent(NamedTuple):
    """One put or delete under ``<prefix>/subnets/``, as the watch saw it."""

    event: WatchEvent
    #: When it was queued (the agent's clock): the start of ``etcd_to_kernel_seconds``.
    at: float


class Listing(NamedTuple):
    """A complete listing of the leases: it replaces the whole table."""

    kvs: list[RawKV]
    at: float
    #: The etcd revision it was read at (0: not known, as from a test).
    revision: int = 0
    #: Read after etcd's history went back: folding it in starts the settle time (``rollback.py``).
    after_rollback: bool = False


class Pin(NamedTuple):
    """The lease keeper moved to another key: that key is ours now (``LeaseIndex.pin``)."""

    key: str
    at: float


LeaseItem = Union[LeaseEvent, Listing, Pin]


class KernelBatch(NamedTuple):
    """Kernel notifications as the monitor delivers them; None: some were lost, only a dump
    can tell what."""

    events: list | None


class Inbox:
    """The two queues between the agent's threads and its worker."""

    def __init__(self) -> None:
        self.leases: collections.deque[LeaseItem] = collections.deque()
        self.kernel: collections.deque[KernelBatch] = collections.deque()
        #: A complete listing has been queued (no cycle runs before one).
        self.listed = False

    def put_event(self, event: WatchEvent, at: float) -> None:
        self.leases.append(LeaseEvent(event, at))

    def put_listing(self, kvs: list[RawKV], at: float, revision: int = 0, after_rollback: bool = False) -> None:
        self.leases.append(Listing(kvs, at, revision, after_rollback))
        self.listed = True

    def put_pin(self, key: str, at: float) -> None:
        self.leases.append(Pin(key, at))

    def put_kernel(self, events: list | None) -> None:
        self.kernel.append(KernelBatch(events))

    def take_leases(self) -> Iterator[LeaseItem]:
        """The queued lease items, oldest first, each taken off the queue as it is yielded
        (what is queued meanwhile is yielded too)."""
        q = self.leases
        while q:
            yield q.popleft()

    def take_kernel(self) -> Iterator[KernelBatch]:
        q = self.kernel
        while q:
            yield q.popleft()

    def __len__(self) -> int:
        """Items waiting in both queues (the coalescing watches it grow)."""
        return len(self.leases) + len(self.kernel)

    def counts(self) -> dict[str, int]:
        return {"lease_items": len(self.leases), "kernel_items": len(self.kernel)}
