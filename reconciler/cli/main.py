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
import gc
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Mapping, Sequence

from reconciler.cli import flags
from reconciler.cli.flags import UsageError
from reconciler.cli.inputs import (bridge_name, check_underlay_address, config_from_snapshot,  # noqa: F401
                                   first_iface, load_snapshot, node_params, open_backend, open_store,
                                   read_input_file, underlay_spec)
from reconciler.core.errors import ReconcilerError
from reconciler.core.leases import LeaseSnapshot
from reconciler.core.model import KernelState
from reconciler.core.reconcile import Cycle, compute_cycle, dump_live, on_link_predicate
from reconciler.core.render import describe, plan_json, plan_text, show_rows, show_text, status_json
from reconciler.rules.commands import cli_rule_plan, rule_show_rows
from reconciler.version import version_text

__all__ = ["main", "flanneld_main", "build_parser", "parse_args"]

DEFAULT_PREFIX = flags.DEFAULT_PREFIX
DEFAULT_ENDPOINTS = flags.DEFAULT_ENDPOINTS
EXAMPLE_SNAPSHOT = Path(__file__).resolve().parent.parent / "examples" / "cluster-3-nodes.json"


class _Parser(argparse.ArgumentParser):
    # An unknown option must not exit 2: for ``plan`` that means "changes
    # pending" to a script.  It is an operator error like any other: exit 1.
    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


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
    from reconciler.cli import diagnose  # explain, audit: questions about the cluster, not changes to it

    diagnose.add_commands(sub)
    return p


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None, *,
               flanneld: bool = False) -> argparse.Namespace:
    """argv (Go's forms too) and ``FLANNELD_*`` -> checked values.  Raises ``ReconcilerError``;
    ``SystemExit(0)`` after ``--help``.

    A flanneld command line has no subcommand: with ``flanneld`` (the
    ``flanneld`` entry point), or when argv opens with one of our flags, it
    means ``run``.  An empty argv is still a usage error here, so that
    ``flannel-reconciler`` alone never starts an agent by accident.
    """
    converted = flags.parser_argv(argv, flanneld=flanneld)
    parser = build_parser()
    args, extra = parser.parse_known_args(converted)
    if extra:
        raise UsageError(f"{flags.suggest(args.command, extra[0])} (see {parser.prog} {args.command} --help)")
    if args.command in flags.AGENT:
        values = flags.resolve(args.command, vars(args), os.environ if environ is None else environ)
        for dest, value in values.items():
            setattr(args, dest, value)
    return args


# --- inputs -----------------------------------------------------------------

def compute(args, snap: LeaseSnapshot, backend=None, live: KernelState | None = None) -> Cycle:
    config = config_from_snapshot(snap)
    node, prefixes = node_params(args, config, backend)
    if live is None:
        live = dump_live(backend, config, node.bridge) if backend is not None else KernelState()
    return compute_cycle(config, snap.kvs, snap.prefix, node, live, on_link_predicate(prefixes), prefixes)


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
    if args.config:
        from reconciler.cli.diagnose import cmd_plan_config  # the what-if: every node, no kernel

        return cmd_plan_config(args)
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
        print(plan_text(plan, colour=_colour(), header=_header(cycle), limit=_limit(args)), end="")
    return 0 if plan.in_sync else 2


def cmd_apply(args) -> int:
    from concurrent.futures import ThreadPoolExecutor
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
        # Reading the rules is a dozen or more iptables/nft subprocesses that only
        # read, and depend on nothing the netlink writes change: they run while
        # the writes go, each side waiting on its own kernel work.  Their result
        # (or exception) is taken after the writes, as when they ran after them.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rules-read") as pool:
            reading = pool.submit(cli_rule_plan, args, cycle, True)
            results = apply_plan(backend, cycle.plan, cycle.desired)
        backend.close()                 # the rules below need no netlink socket
        _, rules, rr, note = reading.result()
        _note(note)
        if rr is not None:
            results = list(results) + rr.apply(rules)
    plan = _with_rules(cycle.plan, rules)
    bad = [r for r in results if not r.ok]
    if args.output == "json":
        print(json.dumps(plan_json(plan, cycle.node_json(), cycle.skipped, results), indent=2))
    else:
        print(plan_text(plan, results, colour=_colour(), header=_header(cycle), limit=_limit(args)), end="")
    for r in bad:
        print(f"error: {r.message}", file=sys.stderr)
    for c in cycle.plan.conflicts:
        # Not written, and never will be while a route that is not ours holds the key.
        print(f"error: conflict: {describe(c.desired)} is held by foreign {describe(c.foreign)}"
              f" (proto {c.foreign.protocol}); left alone", file=sys.stderr)
    return 1 if bad or cycle.plan.conflicts else 0


def cmd_show(args) -> int:
    snap = load_snapshot(args)
    conds: tuple = ()
    if args.live_file:
        cycle = compute(args, snap, live=_read_live_file(args.live_file))
    else:
        with open_backend(args) as backend:
            cycle = compute(args, snap, backend)
            conds = _conditions(backend, cycle)
    _warn_skipped(cycle)
    rows = show_rows(cycle.desired, cycle.live, cycle.plan)
    desired_rules, rules, rr, note = cli_rule_plan(args, cycle, kernel=not args.live_file)
    _note(note)
    rows += rule_show_rows(desired_rules, rules, rr.last_live.xt if rr is not None else "")
    if args.output == "json":
        print(json.dumps({"node": cycle.node_json(), "objects": status_json(rows),
                          "conditions": [{"condition": c.name, "ok": c.ok, "reason": c.reason} for c in conds]},
                         indent=2))
    else:
        print(show_text(rows, colour=_colour()), end="")
        for c in conds:
            if not c.ok:
                print(f"[not ready] {c.name}: {c.reason}")
    return 0 if all(r[0] == "ok" for r in rows) and all(c.ok for c in conds) else 2


def _conditions(backend, cycle: Cycle) -> tuple:
    """The data-plane conditions the agent's /readyz reports (core/health.py), from the kernel as it is.
    The underlay's address and MTU are not among them: ``show`` derives the desired state from
    the underlay as it is now, so a change there shows as drift of the device."""
    from reconciler.core.health import conditions
    from reconciler.kernel import facts

    return conditions(facts.observe(backend, cycle.config, cycle.node, cycle.live, cycle.desired))


def _limit(args) -> int | None:
    from reconciler.core.render import SUMMARY_LINES

    return None if getattr(args, "show_all", False) else SUMMARY_LINES


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


#: Commands whose result is written to standard output.
_PRINTS = frozenset({"plan", "apply", "show"})

#: One-shot commands: they build the whole state once and exit within seconds, so they run
#: without the cyclic garbage collector, whose collections walked the tens of thousands of
#: objects they build again and again (``plan --offline`` of 5,000 leases: 470-690 ms with it,
#: 370-550 ms without; docs/memory.md).  Whatever cycle they leave goes with the process.
#: The agent (``run``) and the long-running tools (``demo``, ``bench``) keep it.
_ONE_SHOT = frozenset({"plan", "apply", "show", "snapshot", "explain", "audit"})
#: The command ``main`` ran last is one of them (``cli.entry`` leaves such a process at once).
one_shot = False


def main(argv: Sequence[str] | None = None, *, flanneld: bool = False) -> int:
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
            args = parse_args(argv, flanneld=flanneld)
        except SystemExit as exc:  # --help printed
            return exc.code if isinstance(exc.code, int) else 0
        debug = getattr(args, "log_level", None) == "debug"
        if sys.stdout is None and (args.command in _PRINTS or (args.command == "snapshot" and not args.output_file)):
            # Python leaves sys.stdout None when descriptor 1 was closed at start.
            raise ReconcilerError(f"standard output is closed: {args.command} writes its result there")
        for note in flags.ignored_notes(args.command, vars(args)):
            _note(note)
        handler = COMMANDS.get(args.command) or args.handler
        global one_shot
        one_shot = args.command in _ONE_SHOT
        if args.command in _ONE_SHOT and gc.isenabled():
            gc.disable()
            try:
                return handler(args)
            finally:
                gc.enable()     # for an in-process caller (the tests); a process exits next
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


def flanneld_main(argv: Sequence[str] | None = None) -> int:
    """The ``flanneld`` entry point: a flanneld command line as it is, no subcommand (it means ``run``)."""
    return main(sys.argv[1:] if argv is None else argv, flanneld=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
