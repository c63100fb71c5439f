"""Desired kernel state, kept up to date one lease at a time.

``desired.desired_state`` computes everything from every lease.  Here the
same objects are held per lease (``node_objects`` for ours, ``peer_objects``
for each peer), so a lease event replaces only that lease's (at most six)
objects, and says which object keys changed: the dirty keys the tracker
must look at.  ``tests/test_incremental.py`` holds ``state`` equal to
``desired_state`` of the same leases after random event sequences.

Two things depend on our own lease rather than on one peer's: our devices
and addresses, and whether this node runs the IPv6 overlay at all (which
decides every peer's v6 entries).  When our lease changes, our own objects
are recomputed; when the IPv6 decision flips, every peer is (O(N), and only
then).
"""
from __future__ import annotations

from typing import Any, Callable

from reconciler.core.config import NetworkConfig
from reconciler.core.desired import NodeParams, node_objects, peer_objects, wants_v6
from reconciler.incremental.lease_index import LeaseIndex
from reconciler.core.leases import Lease
from reconciler.core.model import KernelObject, KernelState

__all__ = ["DesiredIndex", "ObjKey"]

#: An object's identity across kinds: (kind, key).
ObjKey = tuple[str, Any]


def _never(_ip: str) -> bool:
    return False


class DesiredIndex:
    """``state`` is ``desired_state(config, index.leases(), node)`` whenever ``own`` is not None."""

    def __init__(self, config: NetworkConfig, node: NodeParams,
                 on_link: Callable[[str], bool] = _never) -> None:
        self.config = config
        self.node = node
        self.on_link = on_link
        self.state = KernelState()
        self.own: Lease | None = None
        self.own_key: str | None = None
        self._v6 = False
        self._by_lease: dict[str, tuple[KernelObject, ...]] = {}

    def update(self, index: LeaseIndex, changed: set[str]) -> set[ObjKey]:
        """Take the leases whose standing changed; return the object keys whose desired value changed."""
        dirty: set[ObjKey] = set()
        own_key = index.key_of_public_ip(self.node.public_ip)
        own = index.valid.get(own_key) if own_key is not None else None
        todo = set(changed)
        if own_key != self.own_key or own != self.own:
            todo |= {k for k in (self.own_key, own_key) if k is not None}
            self.own, self.own_key = own, own_key
            v6 = wants_v6(self.config, own) if own is not None else False
            if v6 != self._v6:
                self._v6 = v6
                todo |= set(self._by_lease) | set(index.valid)
        for key in todo:
            lease = index.valid.get(key)
            if lease is None:
                objs: tuple[KernelObject, ...] = ()
            elif key == self.own_key:
                objs = node_objects(self.config, self.node, lease)
            else:
                objs = peer_objects(self.config, self.node, lease, self._v6, self.on_link)
            dirty |= self._set(key, objs)
        return dirty

    def _set(self, lease_key: str, objs: tuple[KernelObject, ...]) -> set[ObjKey]:
        old = self._by_lease.get(lease_key, ())
        if old == objs:
            return set()
        dirty: set[ObjKey] = set()
        # Which lease an object key belongs to is the instance ``state`` holds: the one set
        # last.  While our lease moves from one key to another, both hold our devices for a
        # moment, and the old one's removal must not take away what the new one just set, so
        # an object is removed only while it is still this lease's own instance.  (A dict of
        # holders said the same at about 450 bytes a lease: docs/memory.md.)
        if old:
            new_keys = {(o.KIND, o.key) for o in objs}
            for o in old:
                ok = (o.KIND, o.key)
                if ok not in new_keys and self.state.get(o.KIND, o.key) is o:
                    self.state.discard(o)
                    dirty.add(ok)
        # Each object's key once (a property building a tuple): a cold start is 15,000 of these.
        of = self.state.of
        for o in objs:
            kind, key = o.KIND, o.key
            held = of(kind)
            cur = held.get(key)
            if cur is not o:
                held[key] = o
                # (``cur is None`` first: None != o would go through the dataclass's Python-level
                # __eq__ before falling back to identity, 15,000 times in a cold start.)
                if cur is None or cur != o:
                    dirty.add((kind, key))
        if objs:
            self._by_lease[lease_key] = objs
        else:
            self._by_lease.pop(lease_key, None)
        return dirty
