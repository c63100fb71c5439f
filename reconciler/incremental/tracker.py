"""The believed kernel view, and the keys where it may differ from the desired state.

Calico Felix's delta tracker is the model (docs/incremental.md): two views
kept apart -- what we want (``DesiredIndex.state``) and what we believe the
kernel holds (``live``, owned objects only, plus the foreign routes and
nexthops at keys we may want, split off by ``FlannelOwnership.split``) --
and the set of object keys where they may differ
(``dirty``).  Between full resyncs a cycle looks only at the dirty keys:

* a lease event dirties the keys of that lease's objects;
* a netlink notification that changes the believed view (someone deleted
  our route, replaced our neighbour, changed the device's MTU) dirties that
  key; echoes of our own writes change nothing and dirty nothing;
* a write's ACK is the truth for our own writes: a success updates the
  believed view, a failure leaves the key dirty for the retry.

Why planning only the dirty keys is the full plan restricted to them: the
planner treats route, neighbour and FDB keys independently, except through
device changes (re-creation drops everything on the device, a MAC change
flushes its neighbours) and address deletions (their connected routes).  So
a dirty link or address key makes the next plan a full one (in memory, no
dump), and any link write, or a link event other than an MTU change, asks
the caller for a fresh dump (the kernel drops IPv4 routes of a device going
down without telling anyone).  ``tests/test_incremental.py`` checks the
claim: after any sequence of lease events and kernel faults, a full dump and
plan find nothing left to do.

Single-threaded: the agent's worker owns it; other threads only queue events.
"""
from __future__ import annotations

from typing import Any, Iterable

from reconciler.core.model import KernelObject, KernelState, Link, Nexthop, Route
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import Conflict, OpResult, Plan, make_plan

__all__ = ["Tracker"]

ObjKey = tuple[str, Any]
#: Link attributes a change of which the kernel answers with no side effects.
_HARMLESS_LINK_ATTRS = frozenset({"mtu"})

#: Kinds whose writes have kernel side effects the ACK does not show (a device's or an
#: address's connected routes): after one, only a dump tells what the kernel holds.
_DUMP_AFTER = ("link", "address")


class Tracker:
    def __init__(self, policy: FlannelOwnership) -> None:
        self.policy = policy
        self.live = KernelState()
        self.foreign_routes: dict[Any, Route] = {}
        self.foreign_nexthops: dict[int, Nexthop] = {}
        self.dirty: set[ObjKey] = set()
        #: The next plan compares everything (after a dump, or a link/address key changed).
        self.full = True
        #: A dump is needed before the view can be trusted again.
        self.needs_dump = True
        self.conflicts: dict[Any, Conflict] = {}
        self._planned: set[ObjKey] | None = None   # None: the last plan was a full one
        self._unshared = False      # the view holds a dump's own objects, not the desired instances

    # ----------------------------------------------------------- the kernel
    def replace_live(self, dump: KernelState) -> None:
        """A complete dump: the believed view becomes exactly its owned part (the next full
        plan holds the desired instances where equal: ``plan``)."""
        split = self.policy.split(dump)
        self._unshared = True
        self.live, self.foreign_routes, self.foreign_nexthops = split.live, split.foreign_routes, split.foreign_nexthops
        self.full = True
        self.needs_dump = False

    def observe(self, events: Iterable) -> int:
        """Fold netlink notifications (``.op`` "set"/"del", ``.obj``) into the view; return how many changed it."""
        changed = 0
        for ev in events:
            obj = ev.obj
            kind, key = obj.KIND, obj.key
            if self._observe_one(ev.op, obj, kind, key):
                self.dirty.add((kind, key))
                changed += 1
        return changed

    def _observe_one(self, op: str, obj: KernelObject, kind: str, key: Any) -> bool:
        cur = self.live.get(kind, key)
        if isinstance(obj, Link):
            if obj.name not in self.policy.devices:
                return False
            if op == "set":
                if cur == obj:
                    return False
                if cur is None or {a for a in obj.COMPARED if getattr(obj, a) != getattr(cur, a)} \
                        - _HARMLESS_LINK_ATTRS:
                    self.needs_dump = True
                self.live.add(obj)
                return True
            if cur is None:
                return False
            self.live.discard(cur)
            self.needs_dump = True
            return True
        if op == "del":
            gone = False
            if cur is not None and _same_entry(cur, obj):
                self.live.discard(cur)
                gone = True
            if kind == "route" and key in self.foreign_routes and _same_entry(self.foreign_routes[key], obj):
                del self.foreign_routes[key]
                gone = True
            if kind == "nexthop" and self.foreign_nexthops.pop(key, None) is not None:
                self.full = True        # the routes it blocked may be written now
                gone = True
            return gone
        if self.policy.owns(obj):
            if kind == "route":
                self.foreign_routes.pop(key, None)
            elif kind == "nexthop" and self.foreign_nexthops.pop(key, None) is not None:
                self.full = True
            if cur == obj:
                return False
            self.live.add(obj)
            return True
        if self.policy.holds_our_key(obj):
            # A foreign object now holds the key (maybe replacing ours).
            foreign: dict = self.foreign_routes if kind == "route" else self.foreign_nexthops
            if cur is not None:
                self.live.discard(cur)
            if foreign.get(key) == obj:
                return cur is not None
            foreign[key] = obj
            if kind == "nexthop":
                # The routes through that id are conflicts now; they are not dirty keys
                # themselves, so the next plan compares everything (in memory).
                self.full = True
            return True
        return False

    # ------------------------------------------------------------- planning
    def plan(self, desired: KernelState) -> Plan:
        """The changes for the dirty keys (or for everything, when needed), and their conflicts."""
        if self.full or any(k in ("link", "address") for k, _ in self.dirty):
            # After a dump the believed view holds fresh objects, each equal to the desired one
            # when converged: two copies of the state.  The believed view keeps the desired
            # instances instead (a route's protocol, 73 in the kernel and None in the desired
            # one, is outside equality and never read from the believed view): about 650 bytes
            # a peer (docs/memory.md).  Done before the plan, whose comparison of a converged
            # kind is then one of identical instances.
            if self._unshared:
                self.live.share_equal(desired)
                self._unshared = False
            plan = make_plan(desired, self.live, self.foreign_routes, self.foreign_nexthops)
            self.conflicts = {c.desired.key: c for c in plan.conflicts}
            self._planned = None
            return plan
        keys = set(self.dirty)
        want, have = KernelState(), KernelState()
        foreign = {}
        for kind, key in keys:
            obj = desired.get(kind, key)
            if obj is not None:
                want.add(obj)
            obj = self.live.get(kind, key)
            if obj is not None:
                have.add(obj)
            if kind in ("route", "nexthop"):
                self.conflicts.pop(key, None)
            if kind == "route" and key in self.foreign_routes:
                foreign[key] = self.foreign_routes[key]
        # All foreign nexthops: a dirty route through one is a conflict even when the
        # nexthop's own key is not dirty.
        plan = make_plan(want, have, foreign, self.foreign_nexthops)
        for c in plan.conflicts:
            self.conflicts[c.desired.key] = c
        self._planned = keys
        return plan

    def settle(self, plan: Plan, results: Iterable[OpResult], held_back: Iterable = ()) -> None:
        """After applying ``plan`` (minus ``held_back`` changes): record ACKs, keep failures dirty."""
        if self._planned is None:
            self.dirty.clear()
            self.full = False
        else:
            self.dirty -= self._planned
        self._planned = None
        for change in held_back:
            self.dirty.add((change.kind, change.obj.key))
        live_of = self.live.of
        for res in results:
            c = res.change
            kind, obj = c.kind, c.obj
            if kind in _DUMP_AFTER:
                self.needs_dump = True
            if not res.ok:
                self.dirty.add((kind, obj.key))
                continue
            if c.op == "delete":
                live_of(kind).pop(obj.key, None)
            else:
                # The desired instance itself: what the kernel now holds is equal to it (a route's
                # protocol, 73 in the kernel and None here, is not part of equality and is never
                # read from the believed view), and one object serves both views.  A cold start
                # is 15,000 of these: each key is computed once.
                live_of(kind)[obj.key] = obj

    @staticmethod
    def dump_follows(plan: Plan) -> bool:
        """Whether ``settle`` will ask for a dump once ``plan`` is applied: it writes a device or
        an address, whose side effects only a dump shows."""
        return any(c.kind in _DUMP_AFTER for c in plan.changes)

    @property
    def in_sync(self) -> bool:
        return not self.dirty and not self.full and not self.needs_dump


def _same_entry(have: KernelObject, gone: KernelObject) -> bool:
    """Does a deletion notice for ``gone`` remove ``have``?  Routes: the same next hop too,
    since a key can briefly name a route being replaced; other kinds: the key is the entry."""
    if isinstance(have, Route) and isinstance(gone, Route):
        return (have.gateway, have.dev) == (gone.gateway, gone.dev)
    return True
