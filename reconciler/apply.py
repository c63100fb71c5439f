"""Carry out a plan through a backend, phase by phase.

The backend executes a batch and reports one result per change; this module
decides what may go into the next batch.  Phases follow the plan's order
(deletions, links, addresses, neighbour and FDB entries, routes), so a batch
backend can send each phase as one netlink burst.

Dependency rules, and why:

* an address, neighbour, FDB entry or route on a device whose creation
  failed is not attempted (it would only fail with ENODEV and bury the real
  error in noise);
* a route is not written when its neighbour or its FDB entry failed: an
  onlink route whose gateway has no permanent neighbour makes the kernel ARP
  on the overlay, which nobody answers (flannel's old "L3 miss" era), so
  traffic would black-hole instead of failing visibly.

A failed change is simply left undone: the next cycle's plan contains it
again, so retrying is the reconcile loop's job, not this module's.
"""
from __future__ import annotations

from typing import Sequence

from .model import KernelState
from .plan import Change, OpResult, Plan

__all__ = ["apply_plan", "failed"]


def _phase(change: Change) -> int:
    if change.op == "delete":
        return 0
    return {"link": 1, "address": 2, "neigh": 3, "fdb": 3, "route": 4}[change.kind]


def apply_plan(backend, plan: Plan, desired: KernelState | None = None) -> list[OpResult]:
    """Apply ``plan``; return one ``OpResult`` per change, in plan order.

    ``desired`` lets a route find the MAC of a neighbour that was already
    right (so not in the plan) to check its FDB entry.
    """
    results: dict[int, OpResult] = {}
    failed_devs: set[str] = set()
    failed_neigh: set[tuple[str, str]] = set()
    failed_fdb: set[tuple[str, str]] = set()
    neigh_mac: dict[tuple[str, str], str] = {}
    if desired is not None:
        for n in desired.of("neigh").values():
            neigh_mac[n.key] = n.mac

    changes = list(plan)
    for c in changes:
        if c.kind == "neigh" and c.op != "delete":
            neigh_mac[c.obj.key] = c.obj.mac

    for phase in range(5):
        batch: list[tuple[int, Change]] = []
        for i, c in enumerate(changes):
            if _phase(c) != phase:
                continue
            reason = _blocked(c, failed_devs, failed_neigh, failed_fdb, neigh_mac)
            if reason:
                results[i] = OpResult(c, ok=False, message=reason, skipped=True)
                _note_failure(c, failed_devs, failed_neigh, failed_fdb)
            else:
                batch.append((i, c))
        if not batch:
            continue
        outcome = backend.apply([c for _, c in batch])
        if len(outcome) != len(batch):  # a broken backend must not pass silently
            raise RuntimeError(f"backend returned {len(outcome)} results for {len(batch)} changes")
        for (i, c), res in zip(batch, outcome):
            results[i] = res
            if not res.ok and c.op != "delete":
                _note_failure(c, failed_devs, failed_neigh, failed_fdb)
    return [results[i] for i in range(len(changes))]


def _note_failure(c: Change, devs: set, neighs: set, fdbs: set) -> None:
    if c.kind == "link" and c.op == "create":
        devs.add(c.obj.name)
    elif c.kind == "neigh":
        neighs.add(c.obj.key)
    elif c.kind == "fdb":
        fdbs.add(c.obj.key)


def _blocked(c: Change, devs: set, neighs: set, fdbs: set, neigh_mac: dict) -> str:
    if c.op == "delete" or c.kind == "link":
        return ""
    dev = c.obj.dev
    if dev in devs:
        return f"not attempted: device {dev} could not be created"
    if c.kind == "route" and c.obj.gateway is not None and dev is not None:
        nkey = (dev, c.obj.gateway)
        if nkey in neighs:
            return f"not attempted: neighbour {c.obj.gateway} dev {dev} failed"
        mac = neigh_mac.get(nkey)
        if mac is not None and (dev, mac) in fdbs:
            return f"not attempted: fdb {mac} dev {dev} failed"
    return ""


def failed(results: Sequence[OpResult]) -> list[OpResult]:
    return [r for r in results if not r.ok]
