"""Rendering plans, results and status for people and for programs.  Pure.

Text describes every object in iproute2's words, so an operator can read a
line and know the ``ip`` command it amounts to::

    + route 100.64.2.0/24 via 100.64.2.0 dev flannel.1 onlink
    ~ link flannel.1: mtu desired 1450, live 1500
    - fdb 0a:58:64:40:02:01 dev flannel.1 dst 198.18.0.9
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from reconciler.core.leases import Skipped
from reconciler.core.model import KINDS, Address, Fdb, KernelObject, KernelState, Link, Neigh, Nexthop, Route, attr_diff
from reconciler.core.plan import Change, OpResult, Plan

__all__ = [
    "describe",
    "plan_json",
    "plan_text",
    "show_rows",
    "show_text",
    "status_json",
]

_SIGN = {"create": "+", "update": "~", "delete": "-"}
_COLOUR = {"create": "\033[32m", "update": "\033[33m", "delete": "\033[31m"}
_RESET = "\033[0m"
#: The netlink kinds, then the packet filter rules (kind ``rule``, reconciler/rules).
_RENDER_KINDS = KINDS + ("rule",)


def describe(obj: KernelObject) -> str:
    """One object in iproute2 words."""
    if isinstance(obj, Link):
        parts = [f"link {obj.name} type {obj.type}"]
        if obj.type == "vxlan":
            if obj.vni is not None:
                parts.append(f"id {obj.vni}")
            if obj.local is not None:
                parts.append(f"local {obj.local}")
            if obj.underlay is not None:
                parts.append(f"dev {obj.underlay}")
            if obj.port is not None:
                parts.append(f"dstport {obj.port}")
            if obj.learning is not None:
                parts.append("learning" if obj.learning else "nolearning")
            if obj.gbp:
                parts.append("gbp")
        if obj.mtu is not None:
            parts.append(f"mtu {obj.mtu}")
        if obj.mac is not None:
            parts.append(f"address {obj.mac}")
        if obj.up is not None:
            parts.append("up" if obj.up else "down")
        return " ".join(parts)
    if isinstance(obj, Address):
        return f"address {obj.cidr} dev {obj.dev}"
    if isinstance(obj, Route):
        s = f"route {obj.dst}" if obj.type == "unicast" else f"route {obj.type} {obj.dst}"
        if obj.nhid:
            s += f" nhid {obj.nhid}"
        s += _next_hop(obj)
        if obj.metric not in (0, 1024):
            s += f" metric {obj.metric}"
        return s
    if isinstance(obj, Neigh):
        return f"neigh {obj.ip} lladdr {obj.mac} dev {obj.dev} nud permanent"
    if isinstance(obj, Fdb):
        return f"fdb {obj.mac} dev {obj.dev} dst {obj.dst} self permanent"
    if getattr(obj, "KIND", None) == "rule":  # packet filter rules describe themselves (reconciler/rules)
        return obj.describe()  # type: ignore[attr-defined]
    if isinstance(obj, Nexthop):
        return f"nexthop id {obj.id}{_next_hop(obj)}"
    return repr(obj)


def _next_hop(obj) -> str:
    """`` via GW dev DEV onlink``, each part only when set: a route's or a nexthop object's."""
    s = ""
    if obj.gateway is not None:
        s += f" via {obj.gateway}"
    if obj.dev is not None:
        s += f" dev {obj.dev}"
    if obj.onlink:
        s += " onlink"
    return s


def _change_line(c: Change) -> str:
    if c.op == "update":
        name = describe(c.live if c.live is not None else c.obj)
        diffs = ", ".join(f"{a} desired {_fmt(d)}, live {_fmt(l)}" for a, (d, l) in c.changed().items())
        return f"~ {name}: {diffs}"
    return f"{_SIGN[c.op]} {describe(c.obj)}"


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


#: A text plan longer than this many changes is summed up: the counts per kind, the first lines of
#: each kind and every failure (``--show-all`` lists everything; JSON is always complete).  15,000
#: lines of a cold 5,000-node plan tell an operator less than the counts, and cost time to print.
SUMMARY_LINES = 100


def plan_text(
    plan: Plan,
    results: Sequence[OpResult] | None = None,
    colour: bool = False,
    header: str | None = None,
    limit: int | None = SUMMARY_LINES,
) -> str:
    """The plan grouped by kind, one line per change, then a summary line.

    With ``results`` (after ``apply``) each line ends in ``ok`` or the error.  With more than
    ``limit`` changes (None: no limit) each kind shows its counts and its first lines; failed
    changes are always shown.
    """
    by_kind: dict[str, list[tuple[Change, OpResult | None]]] = {k: [] for k in _RENDER_KINDS}
    res = list(results) if results is not None else [None] * len(plan)
    for c, r in zip(plan, res):
        by_kind[c.kind].append((c, r))
    summed = limit is not None and len(plan) > limit
    kinds = sum(1 for rows in by_kind.values() if rows)
    per_kind = max(3, (limit or 0) // max(kinds, 1))
    lines = [header] if header else []
    for kind in _RENDER_KINDS:
        rows = by_kind[kind]
        if not rows:
            continue
        if summed:
            counts = {op: sum(1 for c, _ in rows if c.op == op) for op in ("create", "update", "delete")}
            lines.append(f"{kind}: {len(rows)} (" + ", ".join(f"{n} to {op}" for op, n in counts.items() if n) + ")")
        else:
            lines.append(f"{kind}:")
        hidden = 0
        for i, (c, r) in enumerate(rows):
            if summed and i >= per_kind and (r is None or r.ok):
                hidden += 1
                continue
            line = _change_line(c)
            if r is not None:
                line += "  [ok]" if r.ok else f"  [FAILED: {r.message}]"
            if colour:
                line = f"{_COLOUR[c.op]}{line}{_RESET}"
            lines.append("  " + line)
        if hidden:
            lines.append(f"  ... and {hidden} more {kind} changes")
    if plan.conflicts:
        lines.append("conflicts (left alone: the kernel key is held by a route that is not ours):"
                     if all(c.foreign.KIND == "route" for c in plan.conflicts) else
                     "conflicts (left alone: the kernel key is held by an object that is not ours):")
        for c in plan.conflicts:
            line = f"! {describe(c.desired)}: {conflict_words(c)} foreign {describe(c.foreign)} proto {c.foreign.protocol}"
            lines.append("  " + (f"\033[35m{line}{_RESET}" if colour else line))
    s = plan.summary()
    if plan.in_sync:
        lines.append("In sync: no changes.")
    elif not plan.changes:
        lines.append(f"Plan: no changes; {len(plan.conflicts)} conflict(s) need an operator.")
    elif results is None:
        lines.append(f"Plan: {s['create']} to create, {s['update']} to update, {s['delete']} to delete.")
    else:
        bad = sum(1 for r in res if r is not None and not r.ok)
        lines.append(
            f"Applied: {s['create']} created, {s['update']} updated, {s['delete']} deleted; {bad} failed."
        )
    if summed:
        lines.append(f"({len(plan)} changes summed up; --show-all lists every one, --output json gives them all)")
    return "\n".join(lines) + "\n"


def _change_json(c: Change, r: OpResult | None) -> dict[str, Any]:
    out: dict[str, Any] = {"op": c.op, "kind": c.kind, "object": c.obj.to_json()}
    if c.op == "update" and c.live is not None:
        out["live"] = c.live.to_json()
    if r is not None:
        out["result"] = {"ok": r.ok, "errno": r.errno, "message": r.message}
        if r.skipped:
            out["result"]["skipped"] = True
    return out


def plan_json(
    plan: Plan,
    node: dict[str, Any],
    skipped: Iterable[Skipped] = (),
    results: Sequence[OpResult] | None = None,
) -> dict[str, Any]:
    res = list(results) if results is not None else [None] * len(plan)
    out: dict[str, Any] = {
        "in_sync": plan.in_sync,
        "node": node,
        "changes": [_change_json(c, r) for c, r in zip(plan, res)],
        "summary": plan.summary(),
        "skipped": [{"key": s.key, "reason": s.reason} for s in skipped],
        "conflicts": [
            {"kind": c.desired.KIND, "object": c.desired.to_json(),
             "foreign": {**c.foreign.to_json(), "protocol": c.foreign.protocol}}
            for c in plan.conflicts
        ],
    }
    if results is not None:
        out["failed"] = sum(1 for r in res if r is not None and not r.ok)
    return out


# --- show: desired beside live, like ``ifquery --check`` -------------------

def conflict_words(c) -> str:
    """``held by`` (the foreign object sits at our key) or ``partly taken by`` (a more specific
    foreign route inside a peer's subnet, plan._shadowed)."""
    return "held by" if c.foreign.KIND != "route" or c.foreign.key == c.desired.key else "partly taken by"


def show_rows(desired: KernelState, live: KernelState, plan: Plan) -> list[tuple[str, str, str]]:
    """``(status, object, detail)`` per desired object and per stale owned object.

    Status is ``ok``, ``missing`` (to create), ``drift`` (to update or re-create),
    ``stale`` (owned, not desired: to delete) or ``conflict`` (the key is held
    by a foreign object, left alone).
    """
    conflicted = {(c.desired.KIND, c.desired.key): c for c in plan.conflicts}
    touched: dict[tuple[str, Any], Change] = {}
    for c in plan:
        k = (c.kind, c.obj.key)
        if c.op != "delete" or k not in touched:
            touched[k] = c
    rows: list[tuple[str, str, str]] = []
    for obj in desired:
        c = touched.get((obj.KIND, obj.key))
        have = live.get(obj.KIND, obj.key)
        if (obj.KIND, obj.key) in conflicted:
            foreign = conflicted[(obj.KIND, obj.key)].foreign
            rows.append(("conflict", describe(obj), f"{conflict_words(conflicted[(obj.KIND, obj.key)])} "
                                                    f"foreign {describe(foreign)}"))
        elif c is None:
            rows.append(("ok", describe(obj), ""))
        elif have is None:
            rows.append(("missing", describe(obj), ""))
        else:
            diff = attr_diff(obj, have)
            detail = ", ".join(f"{a} desired {_fmt(d)}, live {_fmt(l)}" for a, (d, l) in diff.items())
            if not diff:  # a device re-creation or MAC change drops it
                detail = "written again: the change to its device drops it"
            rows.append(("drift", describe(obj), detail))
    for c in plan:
        if c.op == "delete" and desired.get(c.kind, c.obj.key) is None:
            rows.append(("stale", describe(c.obj), ""))
    return rows


def show_text(rows: Sequence[tuple[str, str, str]], colour: bool = False) -> str:
    colours = {"ok": "\033[32m", "missing": "\033[31m", "drift": "\033[33m", "stale": "\033[35m",
               "conflict": "\033[35m"}
    lines = []
    for status, what, detail in rows:
        tag = f"[{status}]".ljust(11)
        if colour:
            tag = f"{colours[status]}{tag}{_RESET}"
        lines.append(f"{tag}{what}" + (f"  ({detail})" if detail else ""))
    counts: dict[str, int] = {}
    for status, _, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    lines.append(", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "missing", "drift", "stale", "conflict")))
    return "\n".join(lines) + "\n"


def status_json(rows: Sequence[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"status": s, "object": o, "detail": d} for s, o, d in rows]
