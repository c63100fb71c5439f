"""The backend contract's assertions, shared by the model-kernel and real-kernel properties."""
from __future__ import annotations

from reconciler.core.model import KernelState, attr_diff
from reconciler.core.reconcile import Cycle


def side_effects(cycle: Cycle) -> tuple[set[str], set[str]]:
    """Devices the plan re-creates (everything on them goes), and devices whose
    MAC it changes (the kernel flushes their neighbours)."""
    recreated = {c.obj.name for c in cycle.plan if c.kind == "link" and c.op == "delete"}
    mac_changed = {c.obj.name for c in cycle.plan if c.kind == "link" and "mac" in c.changed()}
    return recreated, mac_changed


def already_right(cycle: Cycle) -> set[tuple[str, object]]:
    """``(kind, key)`` of the desired objects the kernel already had right,
    and that no side effect of the plan disturbs: no write may touch them."""
    recreated, mac_changed = side_effects(cycle)
    # A device whose address or link the plan writes gets its connected route from the kernel
    # again, over whatever route held that key (the bridge's, once ours after a flush).
    readdressed = {c.obj.dev if c.kind == "address" else c.obj.name
                   for c in cycle.plan if c.kind in ("address", "link") and c.op != "delete"}
    return {(o.KIND, o.key) for o in cycle.desired
            if (h := cycle.live.get(o.KIND, o.key)) is not None and not attr_diff(o, h)
            and (h.name if o.KIND == "link" else h.dev) not in recreated
            and not (o.KIND == "neigh" and h.dev in mac_changed)
            and not (o.KIND == "route" and o.gateway is None and not o.nhid and h.dev in readdressed)}


def assert_converged(first: Cycle, again: Cycle, dump: KernelState) -> None:
    """After one apply: nothing left to do, owned live == desired.

    A desired route whose key a foreign route holds is a conflict, reported
    every time and never written; one that a foreign route already satisfies
    is left as it is.  ``dump`` is the unfiltered kernel dump behind ``again``.
    """
    assert not again.plan.changes, again.plan
    assert again.plan.conflicts == first.plan.conflicts
    blocked = {(c.desired.KIND, c.desired.key) for c in first.plan.conflicts}
    satisfied_by_foreign = 0
    for obj in first.desired:
        if (obj.KIND, obj.key) in blocked:
            continue
        have = again.live.get(obj.KIND, obj.key)
        if have is None and obj.KIND == "route":
            held = dump.get("route", obj.key)
            assert held is not None and not attr_diff(obj, held), obj
            satisfied_by_foreign += 1
            continue
        assert have is not None and not attr_diff(obj, have), (obj, have)
    assert len(again.live) == len(first.desired) - len(blocked) - satisfied_by_foreign
