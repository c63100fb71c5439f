"""``flannel-reconciler``: parsing arguments and printing; nothing else.

Exit status, like ``terraform plan -detailed-exitcode``:
0 in sync (or applied cleanly), 2 changes pending (``plan``/``show``),
1 error (bad input, a usage error, unreachable etcd, a failed operation in
``apply``).

The options are defined in ``flags.py``: every one can also come from the
environment as ``FLANNELD_<FLAG>`` (``--etcd-endpoints`` ->
``FLANNELD_ETCD_ENDPOINTS``), and flanneld's one-dash Go forms are accepted
(``docs/flags.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Mapping, Sequence

from reconciler.cli import flags
from reconciler.core.config import NetworkConfig, parse_network_config, require_ipv4, require_vxlan
from reconciler.core.desired import NodeParams, underlay_mtu
from reconciler.core.errors import ConfigError, ReconcilerError
from reconciler.core.leases import LeaseSnapshot, parse_snapshot
from reconciler.core.model import KernelState
from reconciler.kernel.netlink.common import UnderlaySpec, compile_iface_regex
from reconciler.core.ownership import BRIDGE_NAME
from reconciler.core.reconcile import Cycle, compute_cycle, dump_live, on_link_predicate
from reconciler.core.render import describe, plan_json, plan_text, show_rows, show_text, status_json
from reconciler.rules.commands import cli_rule_plan, rule_show_rows

__all__ = ["main", "build_parser", "parse_args"]

DEFAULT_PREFIX = flags.DEFAULT_PREFIX
DEFAULT_ENDPOINTS = flags.DEFAULT_ENDPOINTS
EXAMPLE_SNAPSHOT = Path(__file__).resolve().parent.parent / "examples" / "cluster-3-nodes.json"


class UsageError(ReconcilerError):
    """argparse's complaint (unknown option, missing value), as one line."""


class _Parser(argparse.ArgumentParser):
    # An unknown option must not exit 2: for ``plan`` that means "changes
    # pending" to a script.  It is an operator error like any other: exit 1.
    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def version_text() -> str:
    """``flannel-reconciler 0.2.0 (netlink: batched, Cython fast path)``: the version and the default
    netlink path, as ``--netlink-backend``/``FLANNELD_NETLINK_BACKEND`` and the build make it."""
    from reconciler import __version__

    backend = os.environ.get("FLANNELD_NETLINK_BACKEND") or "batched"
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
    p = _Parser(
        prog="flannel-reconciler",
        description="Declarative node agent for Flannel's VXLAN overlay.",
        epilog="Every option also comes from the environment as FLANNELD_<OPTION> (docs/flags.md); "
               "flanneld's one-dash forms (-etcd-endpoints=URL) are accepted.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action=_VersionAction, help="print the version and the netlink path, and exit")
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("plan", help="dry run: show the changes apply would make (exit 2 if any)",
                        allow_abbrev=False)
    flags.add_to_parser(pp, "plan")

    pa = sub.add_parser("apply", help="converge the kernel once and print what was done", allow_abbrev=False)
    flags.add_to_parser(pa, "apply")

    ps = sub.add_parser("show", help="desired objects beside their live state (exit 2 if any is not ok)",
                        allow_abbrev=False)
    flags.add_to_parser(ps, "show")

    from reconciler.cli import agent as agent_cli  # the daemon, snapshot and demo commands live apart

    agent_cli.add_commands(sub)
    return p


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """argv (Go's forms too) and ``FLANNELD_*`` -> checked values.  Raises ``ReconcilerError``;
    ``SystemExit(0)`` after ``--help``."""
    args = build_parser().parse_args(flags.go_style_argv(argv))
    if args.command in flags.AGENT:
        values = flags.resolve(args.command, vars(args), os.environ if environ is None else environ)
        for dest, value in values.items():
            setattr(args, dest, value)
    return args


# --- inputs -----------------------------------------------------------------

def read_input_file(flag: str, path: str) -> str:
    """A JSON input file's text; binary content is refused naming the flag."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ReconcilerError(f"cannot read {flag} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReconcilerError(f"{flag} {path}: not UTF-8 text (byte {exc.start}): a JSON file is expected") from None


def load_snapshot(args) -> LeaseSnapshot:
    if args.leases_file:
        text = read_input_file("--leases-file", args.leases_file)
        try:
            return parse_snapshot(text)
        except ValueError as exc:
            raise ReconcilerError(f"--leases-file {args.leases_file}: {exc}") from None
    with open_store(args) as store:
        return store.snapshot()


def open_store(args):
    from reconciler.etcd.store import EtcdStore

    return EtcdStore(
        list(args.etcd_endpoints),
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
    kind = getattr(args, "netlink_backend", "batched")   # checked by flags.py, the variable too
    if kind == "batched":
        from reconciler.kernel.netlink.batched import BatchedBackend

        return BatchedBackend(netns=args.netns)
    from reconciler.kernel.netlink.reference import PyrouteBackend

    return PyrouteBackend(netns=args.netns)


def underlay_spec(args) -> UnderlaySpec:
    """flanneld's interface flags as one ``UnderlaySpec`` (their ``FLANNELD_*`` variables: ``flags.py``)."""
    ifaces = tuple(args.iface or ())
    regexes = tuple(getattr(args, "iface_regex", None) or ())
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


def first_iface(args) -> str | None:
    """The underlay named by ``--iface``: the first one given (flanneld tries them in order)."""
    return args.iface[0] if args.iface else None


def check_underlay_address(args, underlay) -> str:
    """The PublicIP: ``--public-ip``, else the underlay's address, which must be one peers can reach."""
    if args.public_ip:
        return args.public_ip
    try:
        return flags.public_ipv4(underlay.address)
    except ValueError as exc:
        named = f"--iface {first_iface(args)}" if args.iface else f"the default-route interface {underlay.name}"
        raise ReconcilerError(f"{named}: its address {underlay.address} is {exc}; "
                              "name the underlay interface with --iface or give --public-ip") from None


def node_params(args, config: NetworkConfig, backend=None) -> tuple[NodeParams, tuple[str, ...]]:
    """This node's parameters and the underlay's connected prefixes.

    MTU: see ``desired.underlay_mtu``.
    """
    underlay = None
    spec = underlay_spec(args)
    if backend is not None:
        underlay = backend.underlay(spec)
    public_ip = check_underlay_address(args, underlay) if underlay else args.public_ip
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
    from reconciler.core.leases import _usable_ipv6  # the lease encoder's own check: what it would not write, we refuse

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
    text = read_input_file("--live-file", path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReconcilerError(f"--live-file {path}: not JSON: {exc}") from None
    except RecursionError:
        raise ReconcilerError(f"--live-file {path}: nested too deeply to be a live state") from None
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
    from contextlib import ExitStack

    from reconciler.agent.instance_lock import acquire_namespace_lock
    from reconciler.kernel.apply import apply_plan
    from reconciler.kernel.netlink.common import netns_path

    snap = load_snapshot(args)
    with ExitStack() as stack:
        backend = stack.enter_context(open_backend(args))    # refuses a namespace that does not exist
        # An agent managing this namespace would see its objects and rules
        # deleted under it (they are not in our --leases-file, or a wrong
        # --etcd-prefix): refused while it runs, and none starts while we write.
        stack.enter_context(acquire_namespace_lock(netns_path(args.netns) if args.netns else None))
        cycle = compute(args, snap, backend)
        _warn_skipped(cycle)
        results = apply_plan(backend, cycle.plan, cycle.desired)
        backend.close()                 # the rules below need no netlink socket
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
    from reconciler.core.plan import Plan

    return Plan(tuple(plan.changes) + tuple(rules.changes), plan.conflicts)


def _note(note: str | None) -> None:
    if note:
        print(f"note: {note}", file=sys.stderr)


COMMANDS = {"plan": cmd_plan, "apply": cmd_apply, "show": cmd_show}


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print("error: " + flags.one_line(message), file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The one operator-error path: every bad flag, variable or file is one
    ``error: ...`` line and exit 1; anything else is a bug, also one line
    (the traceback only with ``--log-level debug``)."""
    # gRPC's C core prints its own lines for TLS and connection failures; the
    # etcd seam already turns those into one clear error, so silence the core.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = False
    try:
        try:
            args = parse_args(argv)
        except SystemExit as exc:  # --help printed
            return exc.code if isinstance(exc.code, int) else 0
        debug = getattr(args, "log_level", None) == "debug"
        handler = COMMANDS.get(args.command) or args.handler
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except (ReconcilerError, ValueError) as exc:
        return _fail(str(exc), debug)
    except OSError as exc:
        return _fail(_os_message(exc), debug)
    except Exception as exc:  # noqa: BLE001 - the last line of defence, named as a bug
        return _fail(f"internal error: {type(exc).__name__}: {exc} "
                     "(a bug; run with --log-level debug for the traceback)", debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
