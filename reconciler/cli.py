"""``flannel-reconciler``: parsing arguments and printing; nothing else.

Exit status, like ``terraform plan -detailed-exitcode``:
0 in sync (or applied cleanly), 2 changes pending (``plan``/``show``),
1 error (bad input, unreachable etcd, a failed operation in ``apply``).

Every flanneld-compatible flag can also come from the environment as
``FLANNELD_<FLAG>`` (``--etcd-endpoints`` -> ``FLANNELD_ETCD_ENDPOINTS``),
as with flanneld.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .config import NetworkConfig, parse_network_config, require_vxlan
from .desired import ROUTE_LAYOUTS, NodeParams, underlay_mtu
from .errors import ConfigError, ReconcilerError
from .leases import LeaseSnapshot, parse_snapshot
from .model import KernelState
from .reconcile import Cycle, compute_cycle, dump_live, on_link_predicate
from .render import describe, plan_json, plan_text, show_rows, show_text, status_json

__all__ = ["main", "build_parser"]

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
EXAMPLE_SNAPSHOT = Path(__file__).with_name("examples") / "cluster-3-nodes.json"


def _env(name: str, default=None):
    return os.environ.get("FLANNELD_" + name.upper().replace("-", "_"), default)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("lease source (a snapshot file, or etcd)")
    g.add_argument("--leases-file", help="read config and leases from a snapshot file instead of etcd")
    g.add_argument("--etcd-endpoints", default=_env("etcd-endpoints", DEFAULT_ENDPOINTS),
                   help="comma-separated etcd URLs (default %(default)s)")
    g.add_argument("--etcd-prefix", default=_env("etcd-prefix", DEFAULT_PREFIX))
    g.add_argument("--etcd-cafile", default=_env("etcd-cafile"))
    g.add_argument("--etcd-certfile", default=_env("etcd-certfile"))
    g.add_argument("--etcd-keyfile", default=_env("etcd-keyfile"))
    g.add_argument("--etcd-username", default=_env("etcd-username"))
    g.add_argument("--etcd-password", default=_env("etcd-password"))
    g.add_argument("--etcd-timeout", type=float, default=5.0, help="seconds per etcd call (default 5)")


def _add_node_args(p: argparse.ArgumentParser, offline_ok: bool) -> None:
    g = p.add_argument_group("this node")
    g.add_argument("--public-ip", default=_env("public-ip"),
                   help="this node's PublicIP (default: the underlay interface's address)")
    g.add_argument("--iface", default=_env("iface"),
                   help="underlay interface, by name or IPv4 address (default: the default-route interface)")
    g.add_argument("--underlay-mtu", type=int, default=None,
                   help="underlay MTU; wins over the config's Backend.MTU and the kernel (offline default 1500)")
    g.add_argument("--netns", help="read and write the kernel inside this network namespace (must exist)")
    g.add_argument("--netlink-backend", choices=("pyroute2", "batched"), default="pyroute2",
                   help="pyroute2 (the reference, default) or batched (raw rtnetlink in batches, "
                        "Cython-accelerated dumps when built)")
    g.add_argument("--route-layout", choices=ROUTE_LAYOUTS, default=_env("route-layout", "onlink"),
                   help="onlink (flanneld's: one onlink gateway route per peer, the default) or nexthop "
                        "(routes through nexthop objects: linear to install past 10,000 nodes, kernel 5.3+)")
    if offline_ok:
        g.add_argument("--live-file", help="compare against this live-state JSON instead of the kernel")
        g.add_argument("--offline", action="store_true",
                       help="compare against an empty kernel (no netlink access): what a new node would get")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flannel-reconciler",
        description="Declarative node agent for Flannel's VXLAN overlay.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("plan", help="dry run: show the changes apply would make (exit 2 if any)")
    _add_source_args(pp)
    _add_node_args(pp, offline_ok=True)
    pp.add_argument("--output", choices=("text", "json"), default="text")

    pa = sub.add_parser("apply", help="converge the kernel once and print what was done")
    _add_source_args(pa)
    _add_node_args(pa, offline_ok=False)
    pa.add_argument("--output", choices=("text", "json"), default="text")

    ps = sub.add_parser("show", help="desired objects beside their live state (exit 2 if any is not ok)")
    _add_source_args(ps)
    _add_node_args(ps, offline_ok=True)
    ps.add_argument("--output", choices=("text", "json"), default="text")

    from . import agent_cli  # the daemon, snapshot and demo commands live apart

    agent_cli.add_commands(sub, _add_source_args, _add_node_args)
    return p


# --- inputs -----------------------------------------------------------------

def load_snapshot(args) -> LeaseSnapshot:
    if args.leases_file:
        try:
            text = Path(args.leases_file).read_text()
        except OSError as exc:
            raise ReconcilerError(f"cannot read --leases-file {args.leases_file}: {exc.strerror}") from None
        try:
            return parse_snapshot(text)
        except ValueError as exc:
            raise ReconcilerError(f"--leases-file {args.leases_file}: {exc}") from None
    with open_store(args) as store:
        return store.snapshot()


def open_store(args):
    from .etcd import EtcdStore

    return EtcdStore(
        [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()],
        prefix=args.etcd_prefix,
        ca_file=args.etcd_cafile,
        cert_file=args.etcd_certfile,
        key_file=args.etcd_keyfile,
        username=args.etcd_username,
        password=args.etcd_password,
        timeout=args.etcd_timeout,
    )


def config_from_snapshot(snap: LeaseSnapshot) -> NetworkConfig:
    key = snap.prefix.rstrip("/") + "/config"
    for kv in snap.kvs:
        if kv.key == key:
            cfg = parse_network_config(kv.value)
            require_vxlan(cfg)
            return cfg
    raise ConfigError(key, "not found (did you create the config with the etcd v3 API?)")


def _is_ip(s: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def open_backend(args):
    if getattr(args, "netlink_backend", "pyroute2") == "batched":
        from .netlink.batched import BatchedBackend

        return BatchedBackend(netns=args.netns)
    from .netlink.reference import PyrouteBackend

    return PyrouteBackend(netns=args.netns)


def node_params(args, config: NetworkConfig, backend=None) -> tuple[NodeParams, tuple[str, ...]]:
    """This node's parameters and the underlay's connected prefixes.

    MTU: see ``desired.underlay_mtu``.
    """
    underlay = None
    if backend is not None:
        underlay = backend.underlay(args.iface)
    public_ip = args.public_ip or (underlay.address if underlay else None)
    if not public_ip:
        raise ReconcilerError("--public-ip is required when the kernel is not read (offline plan)")
    mtu = underlay_mtu(args.underlay_mtu, config.mtu, (underlay.name, underlay.mtu) if underlay else None)
    if underlay is not None:
        name = underlay.name
    elif args.iface and not _is_ip(args.iface):
        name = args.iface
    else:
        name = None
    params = NodeParams(public_ip=public_ip, underlay_mtu=mtu, underlay=name,
                        route_layout=getattr(args, "route_layout", "onlink"))
    return params, (underlay.prefixes if underlay else ())


def compute(args, snap: LeaseSnapshot, backend=None, live: KernelState | None = None) -> Cycle:
    config = config_from_snapshot(snap)
    node, prefixes = node_params(args, config, backend)
    if live is None:
        live = dump_live(backend, config, node.bridge) if backend is not None else KernelState()
    return compute_cycle(config, snap.kvs, snap.prefix, node, live, on_link_predicate(prefixes))


def _read_live_file(path: str) -> KernelState:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ReconcilerError(f"cannot read --live-file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ReconcilerError(f"--live-file {path}: not JSON: {exc}") from None
    try:
        return KernelState.from_json(data)
    except ValueError as exc:
        raise ReconcilerError(f"--live-file {path}: {exc}") from None


def _warn_skipped(cycle: Cycle) -> None:
    for s in cycle.skipped:
        print(f"warning: skipped lease {s.key}: {s.reason}", file=sys.stderr)


def _colour() -> bool:
    return sys.stdout.isatty() and os.environ.get("NO_COLOR") is None


# --- commands ---------------------------------------------------------------

def cmd_plan(args) -> int:
    snap = load_snapshot(args)
    if args.live_file:
        cycle = compute(args, snap, live=_read_live_file(args.live_file))
    elif args.offline:
        cycle = compute(args, snap, live=KernelState())
    else:
        with open_backend(args) as backend:
            cycle = compute(args, snap, backend)
    _warn_skipped(cycle)
    if args.output == "json":
        print(json.dumps(plan_json(cycle.plan, cycle.node_json(), cycle.skipped), indent=2))
    else:
        print(plan_text(cycle.plan, colour=_colour(),
                        header=f"node {cycle.node.public_ip}, subnet {cycle.own.subnet}"), end="")
    return 0 if cycle.plan.in_sync else 2


def cmd_apply(args) -> int:
    from .apply import apply_plan

    snap = load_snapshot(args)
    with open_backend(args) as backend:
        cycle = compute(args, snap, backend)
        _warn_skipped(cycle)
        results = apply_plan(backend, cycle.plan, cycle.desired)
    bad = [r for r in results if not r.ok]
    if args.output == "json":
        print(json.dumps(plan_json(cycle.plan, cycle.node_json(), cycle.skipped, results), indent=2))
    else:
        print(plan_text(cycle.plan, results, colour=_colour(),
                        header=f"node {cycle.node.public_ip}, subnet {cycle.own.subnet}"), end="")
    for r in bad:
        print(f"error: {r.message}", file=sys.stderr)
    for c in cycle.plan.conflicts:
        # Not written, and never will be while a route that is not ours holds the key.
        print(f"error: conflict: {describe(c.desired)} is held by foreign {describe(c.foreign)}"
              f" (proto {c.foreign.protocol}); left alone", file=sys.stderr)
    return 1 if bad or cycle.plan.conflicts else 0


def cmd_show(args) -> int:
    snap = load_snapshot(args)
    if args.live_file:
        cycle = compute(args, snap, live=_read_live_file(args.live_file))
    else:
        with open_backend(args) as backend:
            cycle = compute(args, snap, backend)
    _warn_skipped(cycle)
    rows = show_rows(cycle.desired, cycle.live, cycle.plan)
    if args.output == "json":
        print(json.dumps({"node": cycle.node_json(), "objects": status_json(rows)}, indent=2))
    else:
        print(show_text(rows, colour=_colour()), end="")
    return 0 if all(r[0] == "ok" for r in rows) else 2


COMMANDS = {"plan": cmd_plan, "apply": cmd_apply, "show": cmd_show}


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core prints its own lines for TLS and connection failures; the
    # etcd seam already turns those into one clear error, so silence the core.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or args.handler
    try:
        return handler(args)
    except ReconcilerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
