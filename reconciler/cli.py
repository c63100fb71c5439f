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

from .config import NetworkConfig, parse_network_config, require_ipv4, require_vxlan
from .desired import ROUTE_LAYOUTS, NodeParams, underlay_mtu
from .errors import ConfigError, ReconcilerError
from .leases import LeaseSnapshot, parse_snapshot
from .model import KernelState
from .netlink.common import UnderlaySpec, compile_iface_regex
from .ownership import BRIDGE_NAME
from .reconcile import Cycle, compute_cycle, dump_live, on_link_predicate
from .render import describe, plan_json, plan_text, show_rows, show_text, status_json
from .rules.commands import add_rule_args, cli_rule_plan, rule_show_rows

__all__ = ["main", "build_parser"]

DEFAULT_PREFIX = "/coreos.com/network"
NETLINK_BACKENDS = ("batched", "pyroute2")
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
    g.add_argument("--public-ipv6", default=_env("public-ipv6"),
                   help="dual stack: this node's PublicIPv6 (default: the underlay interface's IPv6 address)")
    g.add_argument("--iface", action="append", default=None,
                   help="underlay interface, by name or IPv4 address; repeat to try several in order "
                        "(default: the interface holding --public-ip, else the default-route interface)")
    g.add_argument("--iface-regex", action="append", default=None,
                   help="underlay: first interface whose IPv4 address, else name, matches; repeatable, "
                        "tried after every --iface")
    g.add_argument("--iface-can-reach", default=_env("iface-can-reach"),
                   help="underlay: the interface of the route to this address (as `ip route get`)")
    g.add_argument("--bridge", default=_env("bridge", BRIDGE_NAME),
                   help="name of the pod bridge the agent creates and owns (default %(default)s)")
    g.add_argument("--no-bridge", action="store_true", default=_env("no-bridge", "").lower() in ("1", "true"),
                   help="leave the pod bridge to the CNI plugin (or Docker --bip): neither create nor own one")
    g.add_argument("--underlay-mtu", type=int, default=None,
                   help="underlay MTU; wins over the config's Backend.MTU and the kernel (offline default 1500)")
    g.add_argument("--netns", help="read and write the kernel inside this network namespace (must exist)")
    g.add_argument("--netlink-backend", choices=NETLINK_BACKENDS, default=_env("netlink-backend", "batched"),
                   help="batched (default: raw rtnetlink in batches, Cython-accelerated encoding and dumps "
                        "when built) or pyroute2 (the reference)")
    g.add_argument("--route-layout", choices=ROUTE_LAYOUTS, default=_env("route-layout", "onlink"),
                   help="onlink (flanneld's: one onlink gateway route per peer, the default) or nexthop "
                        "(routes through nexthop objects: linear to install past 10,000 nodes, kernel 5.3+)")
    if offline_ok:
        g.add_argument("--live-file", help="compare against this live-state JSON instead of the kernel")
        g.add_argument("--offline", action="store_true",
                       help="compare against an empty kernel (no netlink access): what a new node would get")


def version_text() -> str:
    """``flannel-reconciler 0.2.0 (netlink: batched, Cython fast path)``: the version and the default
    netlink path, as ``--netlink-backend``/``FLANNELD_NETLINK_BACKEND`` and the build make it."""
    from . import __version__

    backend = _env("netlink-backend", "batched")
    if backend == "batched":
        import _fastpath

        backend += ", Cython fast path" if _fastpath.AVAILABLE else ", pure Python"
    return f"flannel-reconciler {__version__} (netlink: {backend})"


class _VersionAction(argparse.Action):
    """``--version``: like argparse's own, but the text (which imports ``_fastpath``) is made only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flannel-reconciler",
        description="Declarative node agent for Flannel's VXLAN overlay.",
    )
    p.add_argument("--version", action=_VersionAction, help="print the version and the netlink path, and exit")
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("plan", help="dry run: show the changes apply would make (exit 2 if any)")
    _add_source_args(pp)
    _add_node_args(pp, offline_ok=True)
    pp.add_argument("--output", choices=("text", "json"), default="text")
    add_rule_args(pp)

    pa = sub.add_parser("apply", help="converge the kernel once and print what was done")
    _add_source_args(pa)
    _add_node_args(pa, offline_ok=False)
    pa.add_argument("--output", choices=("text", "json"), default="text")
    add_rule_args(pa)

    ps = sub.add_parser("show", help="desired objects beside their live state (exit 2 if any is not ok)")
    _add_source_args(ps)
    _add_node_args(ps, offline_ok=True)
    ps.add_argument("--output", choices=("text", "json"), default="text")
    add_rule_args(ps)

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
            require_ipv4(cfg)
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
    kind = getattr(args, "netlink_backend", "batched")
    if kind not in NETLINK_BACKENDS:        # argparse checks the flag, not a default from the environment
        raise ReconcilerError(f"FLANNELD_NETLINK_BACKEND={kind!r}: must be one of {', '.join(NETLINK_BACKENDS)}")
    if kind == "batched":
        from .netlink.batched import BatchedBackend

        return BatchedBackend(netns=args.netns)
    from .netlink.reference import PyrouteBackend

    return PyrouteBackend(netns=args.netns)


def underlay_spec(args) -> UnderlaySpec:
    """flanneld's interface flags as one ``UnderlaySpec`` (``FLANNELD_IFACE`` and
    ``FLANNELD_IFACE_REGEX`` stand for one flag each when no flag is given)."""
    ifaces = args.iface or ([_env("iface")] if _env("iface") else [])
    regexes = getattr(args, "iface_regex", None) or ([_env("iface-regex")] if _env("iface-regex") else [])
    for pattern in regexes:
        compile_iface_regex(pattern)            # a bad pattern is refused before anything is read
    return UnderlaySpec(ifaces=tuple(ifaces), regexes=tuple(regexes),
                        can_reach=getattr(args, "iface_can_reach", None) or None, public_ip=args.public_ip)


def bridge_name(args) -> str | None:
    """The pod bridge we manage, or None (``--no-bridge``: the CNI plugin's)."""
    if getattr(args, "no_bridge", False):
        return None
    name = getattr(args, "bridge", None) or BRIDGE_NAME
    if len(name) > 15 or "/" in name or not name.strip() or name in (".", ".."):
        raise ReconcilerError(f"--bridge {name!r}: not a valid interface name (at most 15 characters, no '/')")
    return name


def node_params(args, config: NetworkConfig, backend=None) -> tuple[NodeParams, tuple[str, ...]]:
    """This node's parameters and the underlay's connected prefixes.

    MTU: see ``desired.underlay_mtu``.
    """
    underlay = None
    spec = underlay_spec(args)
    if backend is not None:
        underlay = backend.underlay(spec)
    public_ip = args.public_ip or (underlay.address if underlay else None)
    if not public_ip:
        raise ReconcilerError("--public-ip is required when the kernel is not read (offline plan)")
    public_ipv6 = _public_ipv6(args)
    if underlay is not None and config.enable_ipv6:
        underlay = backend.underlay_v6(underlay, public_ipv6)
        public_ipv6 = public_ipv6 or underlay.address6
    mtu = underlay_mtu(args.underlay_mtu, config.mtu, (underlay.name, underlay.mtu) if underlay else None)
    if underlay is not None:
        name = underlay.name
    elif len(spec.ifaces) == 1 and not spec.regexes and not spec.can_reach and not _is_ip(spec.ifaces[0]):
        name = spec.ifaces[0]
    else:
        name = None
    params = NodeParams(public_ip=public_ip, underlay_mtu=mtu, underlay=name, bridge=bridge_name(args),
                        public_ipv6=public_ipv6 if config.enable_ipv6 else None,
                        route_layout=getattr(args, "route_layout", "onlink"))
    return params, ((underlay.prefixes + underlay.prefixes6) if underlay else ())


def _public_ipv6(args) -> str | None:
    """``--public-ipv6`` in Go's text form; a value that is not a unicast IPv6 address is refused."""
    value = getattr(args, "public_ipv6", None)
    if not value:
        return None
    from .leases import _usable_ipv6  # the lease encoder's own check: what it would not write, we refuse

    try:
        return _usable_ipv6(value)
    except ValueError as exc:
        raise ReconcilerError(f"--public-ipv6: {exc}") from None


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


def _header(cycle: Cycle) -> str:
    text = f"node {cycle.node.public_ip}, subnet {cycle.own.subnet}"
    if cycle.config.enable_ipv6 and cycle.own.ipv6_subnet is not None:
        text += f", IPv6 subnet {cycle.own.ipv6_subnet}"
    return text


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
    _, rules, _, note = cli_rule_plan(args, cycle, kernel=not (args.live_file or args.offline))
    _note(note)
    plan = _with_rules(cycle.plan, rules)
    if args.output == "json":
        print(json.dumps(plan_json(plan, cycle.node_json(), cycle.skipped), indent=2))
    else:
        print(plan_text(plan, colour=_colour(),
                        header=_header(cycle)), end="")
    return 0 if plan.in_sync else 2


def cmd_apply(args) -> int:
    from .apply import apply_plan

    snap = load_snapshot(args)
    with open_backend(args) as backend:
        cycle = compute(args, snap, backend)
        _warn_skipped(cycle)
        results = apply_plan(backend, cycle.plan, cycle.desired)
    _, rules, rr, note = cli_rule_plan(args, cycle, kernel=True)
    _note(note)
    if rr is not None:
        results = list(results) + rr.apply(rules)
    plan = _with_rules(cycle.plan, rules)
    bad = [r for r in results if not r.ok]
    if args.output == "json":
        print(json.dumps(plan_json(plan, cycle.node_json(), cycle.skipped, results), indent=2))
    else:
        print(plan_text(plan, results, colour=_colour(),
                        header=_header(cycle)), end="")
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
    desired_rules, rules, rr, note = cli_rule_plan(args, cycle, kernel=not args.live_file)
    _note(note)
    rows += rule_show_rows(desired_rules, rules, rr.last_live.xt if rr is not None else "")
    if args.output == "json":
        print(json.dumps({"node": cycle.node_json(), "objects": status_json(rows)}, indent=2))
    else:
        print(show_text(rows, colour=_colour()), end="")
    return 0 if all(r[0] == "ok" for r in rows) else 2


def _with_rules(plan, rules):
    """The netlink plan followed by the rule changes (kind ``rule``), for rendering and exit codes."""
    from .plan import Plan

    return Plan(tuple(plan.changes) + tuple(rules.changes), plan.conflicts)


def _note(note: str | None) -> None:
    if note:
        print(f"note: {note}", file=sys.stderr)


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
