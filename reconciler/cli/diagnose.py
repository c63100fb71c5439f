"""The questions no flannel tool answers: ``explain TARGET``, ``audit``, and ``plan --config FILE``.

Each gathers its facts at the edges (etcd or a snapshot file, the kernel) and hands them to a pure
function of the core (``core/explain.py``, ``core/audit.py``, ``core/whatif.py``); this module only
reads, prints and chooses the exit status: 0 all good, 2 something to look at, 1 an error.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

from reconciler.core.errors import NetlinkError, ReconcilerError

__all__ = ["add_commands", "cmd_plan_config"]


def add_commands(sub) -> None:
    from reconciler.cli import flags

    pe = sub.add_parser("explain", help="the path from a local pod to TARGET, link by link, and the first broken one "
                                        "(exit 2 if broken)", allow_abbrev=False)
    pe.add_argument("target", metavar="TARGET", help="a pod IP, a subnet, a PublicIP or a lease key")
    flags.add_to_parser(pe, "explain")
    pe.set_defaults(handler=cmd_explain)

    pa = sub.add_parser("audit", help="every lease of the cluster and what is wrong with them, touching no node "
                                      "(exit 2 if anything is)", allow_abbrev=False)
    flags.add_to_parser(pa, "audit")
    pa.set_defaults(handler=cmd_audit)


# --------------------------------------------------------------------------------------------
# audit

def cmd_audit(args) -> int:
    from reconciler.cli.inputs import config_from_snapshot, load_snapshot, open_store
    from reconciler.core.audit import audit_cluster

    ttls = None
    if args.leases_file:
        snap = load_snapshot(args)
    else:
        with open_store(args) as store:
            snap = store.snapshot()
            if args.expiry_window:
                ttls = _ttls(store, {kv.lease for kv in snap.kvs if kv.lease})
    result = audit_cluster(config_from_snapshot(snap), snap.kvs, snap.prefix, snap.revision, ttls,
                           args.expiry_window)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(audit_text(result), end="")
    return 0 if result.clean else 2


def _ttls(store, lease_ids) -> dict[int, int]:
    """Remaining TTL per etcd lease id (one call each: etcd has no batch form)."""
    return {lease_id: max(store.time_to_live(lease_id), 0) for lease_id in sorted(lease_ids)}


def audit_text(result) -> str:
    c = result.counts
    cfg = result.config
    lines = [f"cluster {result.prefix} at revision {result.revision}: Network {cfg.network}, "
             f"SubnetLen {cfg.subnet_len}, VNI {cfg.vni}",
             f"leases: {c['leases']} ({c['ok']} ok, {c['reservations']} reservations, {c['skipped']} skipped)",
             f"pool: {result.pool.used} of {result.pool.total} subnets leased, {result.pool.free} free"]
    if not result.findings:
        lines.append("no findings")
    for f in result.findings:
        keys = ", ".join(f.keys)
        lines.append(f"{f.severity:<7} {f.code}: {f.message}" + (f" [{keys}]" if keys else ""))
        if f.effect:
            lines.append(f"        -> {f.effect}")
    serious = sum(f.severity in ("error", "warning") for f in result.findings)
    lines.append(f"Audit: {serious} to look at, {len(result.findings) - serious} for information.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# plan --config

def cmd_plan_config(args) -> int:
    from reconciler.cli.inputs import bridge_name, config_from_snapshot, load_snapshot, read_input_file
    from reconciler.core.config import parse_network_config, require_ipv4, require_vxlan
    from reconciler.core.whatif import NodeTemplate, cluster_whatif

    text = read_input_file("--config", args.config)
    try:
        new = parse_network_config(text)
        require_vxlan(new)
        require_ipv4(new)
    except ReconcilerError as exc:
        raise ReconcilerError(f"--config {args.config}: {exc}") from None
    snap = load_snapshot(args)
    old = config_from_snapshot(snap)
    template = NodeTemplate(underlay_mtu=args.underlay_mtu or 1500, route_layout=args.route_layout,
                            bridge=bridge_name(args), segments=tuple(args.segment or ()))
    result = cluster_whatif(old, new, snap.kvs, snap.prefix, template)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(whatif_text(result), end="")
    return 0 if result.in_sync else 2


def whatif_text(result) -> str:
    lines = []
    if result.config_changes:
        lines.append("config: " + "; ".join(f"{f} {a} -> {b}" for f, a, b in result.config_changes))
    else:
        lines.append("config: no change")
    for s in result.dropped:
        lines.append(f"dropped: {s.key}: {s.reason}")
    for key in result.joining:
        lines.append(f"joining: {key} (valid under the new config only)")
    groups: dict[tuple, list] = defaultdict(list)
    for node in result.nodes:
        groups[node.summary()].append(node)
    for nodes in sorted(groups.values(), key=lambda group: -len(group)):
        first = nodes[0]
        who = (f"{len(nodes)} nodes" if len(nodes) > 1 else "1 node") + " (" + ", ".join(
            n.public_ip for n in nodes[:3]) + (", ..." if len(nodes) > 3 else "") + ")"
        if first.loses_lease:
            lines.append(f"{who}: loses its lease ({first.loses_lease}) and must acquire a new one")
            continue
        parts = [f"{n} {op} {kind}" for op, kind, n in first.changes] or ["nothing to change"]
        lines.append(f"{who}: " + ", ".join(parts))
        for dev in first.recreated:
            lines.append(f"    device {dev} re-created (everything on it written again)")
        for dev, attrs in first.updated:
            lines.append(f"    device {dev} updated in place: {', '.join(attrs)}")
        for kind, n in first.left_behind:
            lines.append(f"    {n} {kind} left behind (no longer ours under the new config; not deleted)")
    totals = result.totals()
    total = ", ".join(f"{n} {op} {kind}" for (op, kind), n in sorted(totals.items())) or "no changes"
    lines.append(f"Cluster: {len(result.nodes)} nodes, {total}.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# explain

def cmd_explain(args) -> int:
    from reconciler.cli.inputs import config_from_snapshot, load_snapshot, node_params, open_backend, open_store
    from reconciler.core.explain import Facts, explain, resolve_target
    from reconciler.core.reconcile import compute_cycle, dump_live, on_link_predicate
    from reconciler.rules.commands import cli_rule_plan, rule_show_rows

    snap = load_snapshot(args)
    config = config_from_snapshot(snap)
    with open_backend(args) as backend:
        node, prefixes = node_params(args, config, backend)
        dump = dump_live(backend, config, node.bridge)
        on_link = on_link_predicate(prefixes)
        cycle = compute_cycle(config, snap.kvs, snap.prefix, node, dump, on_link)
        base = snap.prefix.rstrip("/") + "/subnets/"
        raw = {kv.key: kv.value for kv in snap.kvs if kv.key.startswith(base)}
        res = resolve_target(args.target, cycle.leases, cycle.skipped, raw, cycle.own, snap.prefix,
                             config.network, config.ipv6_network)
        route = None
        if res.kind == "peer" and res.lease is not None:
            peer = res.lease.public_ip if res.family == 4 else res.lease.public_ipv6
            if res.family == 4:
                try:
                    route = backend.route_get(peer)
                except NetlinkError as exc:
                    route = str(exc)
    desired_rules, rule_plan, rr, note = cli_rule_plan(args, cycle, kernel=True)
    if note:
        print(f"note: {note}", file=sys.stderr)
    rows = tuple(rule_show_rows(desired_rules, rule_plan, rr.last_live.xt if rr is not None else ""))
    if res.family == 6:
        rows = tuple(r for r in rows if "ip6" in r[1] or "ipv6" in r[1])
    else:
        rows = tuple(r for r in rows if "ip6" not in r[1] and "ipv6" not in r[1])
    ttl = None
    if res.lease is not None and res.lease.etcd_lease and not args.leases_file:
        with open_store(args) as store:
            ttl = max(store.time_to_live(res.lease.etcd_lease), 0)
    devices = tuple(sorted({config.device_name, config.v6_device_name}))
    out = explain(res, cycle, dump, Facts(node.underlay_mtu, route, rows, ttl, devices), on_link)
    if args.output == "json":
        print(json.dumps(out.to_json(), indent=2))
    else:
        print(out.text(), end="")
    return 0 if out.complete else 2
