"""The long-running and etcd-facing commands: ``run``, ``snapshot``, ``demo``, ``bench``."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable

from reconciler.core.errors import ReconcilerError

__all__ = ["add_commands"]


def _demo_nodes(text: str) -> int:
    import argparse

    # The range is the demo's own check (run_demo), with its own message.
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_commands(sub) -> None:
    """Register the agent's subcommands on the main parser (their options: ``flags.py``)."""
    from reconciler.cli import flags

    pr = sub.add_parser("run", help="the node agent: acquire a lease, then reconcile on every change",
                        allow_abbrev=False)
    flags.add_to_parser(pr, "run")
    pr.set_defaults(handler=cmd_run)

    ps = sub.add_parser("snapshot", help="write the etcd state as a --leases-file snapshot", allow_abbrev=False)
    flags.add_to_parser(ps, "snapshot")
    ps.set_defaults(handler=cmd_snapshot)

    pd = sub.add_parser("demo", help="a private etcd, N nodes as network namespaces, pods, and a ping matrix",
                        allow_abbrev=False)
    pd.add_argument("--nodes", type=_demo_nodes, default=3, help="how many nodes (2..20, default 3)")
    pd.add_argument("--keep", action="store_true", help="leave the demo running until Ctrl-C")
    pd.add_argument("--ipv6", action="store_true",
                    help="dual stack: an IPv6 network beside the IPv4 one, and a ping -6 matrix too")
    pd.set_defaults(handler=cmd_demo)

    pb = sub.add_parser("bench", help="cluster-scale benchmarks: the real agent against a simulated cluster (root)")
    pb.add_argument("--nodes", default="1000,5000",
                    help="comma-separated cluster sizes (default %(default)s; e.g. 1000,5000,10000,20000)")
    pb.add_argument("--backend", choices=("batched", "pyroute2"), default="batched",
                    help="the agent's --netlink-backend (default %(default)s, the agent's own default)")
    pb.add_argument("--out", default="bench-results", help="directory for the JSON file and the plots")
    pb.add_argument("--quick", action="store_true",
                    help="CI smoke mode: fewer changes, 5 s idle window and resync (every scenario still runs)")
    pb.set_defaults(handler=cmd_bench)


def cmd_run(args) -> int:
    from reconciler.cli.inputs import check_underlay_address, open_backend, open_store, public_ipv6
    from reconciler.agent.daemon import Agent, AgentOptions

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    # --log-level debug is ours: pyroute2's own debug output is thousands of message dumps a second.
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, logging.getLogger().level))
    stop = threading.Event()

    from reconciler.cli.inputs import bridge_name, underlay_spec

    spec = underlay_spec(args)
    opts = AgentOptions(
        public_ip=args.public_ip, iface=list(spec.ifaces), underlay_mtu=args.underlay_mtu,
        iface_regex=list(spec.regexes), iface_can_reach=spec.can_reach, bridge=bridge_name(args),
        subnet_file=args.subnet_file, resync_interval=args.resync_interval, healthz_ip=args.healthz_ip,
        healthz_port=args.healthz_port, metrics_port=args.metrics_port, ip_masq=args.ip_masq,
        public_ipv6=public_ipv6(args),
        forward_rules=args.iptables_forward_rules, masq_fully_random_disable=args.ip_masq_fully_random_disable,
        iptables_resync=args.iptables_resync,
        route_layout=args.route_layout, netns=args.netns,
        renew_margin=args.subnet_lease_renew_margin * 60.0, blackhole_route=args.ip_blackhole_route,
    )
    from reconciler.agent.instance_lock import acquire_instance_lock
    from reconciler.kernel.netlink.common import netns_path

    # Before etcd or the kernel is touched: one agent per namespace and subnet file.
    lock = acquire_instance_lock(netns_path(args.netns) if args.netns else None, args.subnet_file)
    for what in lock.skipped:
        logging.getLogger("flannel_reconciler").warning("lock not taken: %s (the namespace lock still is)", what)
    for what in lock.notes:
        logging.getLogger("flannel_reconciler").warning("lock taken, but %s", what)
    with lock, open_store(args) as store, open_backend(args) as backend:
        # The operator's mistakes are refused before the agent starts; the
        # agent itself logs and retries and never exits.
        check_underlay_address(args, backend.underlay(spec))
        # Said once the agent starts, as flanneld logs its flags: a unit's -v=N shows what it became here.
        logging.getLogger("flannel_reconciler").info(
            "log level %s%s", args.log_level, f" (from -v={args.v})" if args.v is not None else "")
        # Installed only now: pyroute2 forks a helper to open a namespace
        # socket and stops it with SIGTERM; that child must not inherit ours.
        from reconciler.rules import IptablesBackend, NftablesBackend, RuleReconciler

        rules = RuleReconciler(IptablesBackend(args.netns), NftablesBackend(args.netns))
        agent = Agent(store, backend, opts, rules=rules)
        handle_signals(stop, agent.request_resync)
        agent.run(stop)
    return 0


def handle_signals(stop: threading.Event, resync: Callable[[], None]) -> None:
    """SIGTERM and SIGINT set ``stop``; SIGHUP calls ``resync`` (docs/design.md says why).

    The handler only writes the signal's number to a pipe; a thread reads it
    and acts.  A Python handler runs on the main thread between two bytecodes,
    maybe while that thread holds the very lock that setting an Event or
    waking the worker takes.  Main thread only (``signal.signal``)."""
    log = logging.getLogger("flannel_reconciler")
    pid = os.getpid()
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)

    def on_signal(signum, _frame) -> None:
        if os.getpid() != pid:
            # A forked child (pyroute2's namespace helper, which its parent stops
            # with SIGTERM): die as by default, and never tell the agent's thread.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        try:
            os.write(wfd, bytes((signum,)))
        except BlockingIOError:     # 64 KiB of signals not yet read: the thread has them to act on
            pass

    def dispatch() -> None:
        while True:
            for signum in os.read(rfd, 64):
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: resyncing now (full kernel dump and diff); the network config is read "
                             "at start-up only")
                    resync()
                else:
                    log.info("signal %d (%s): stopping, kernel state left in place", signum,
                             signal.Signals(signum).name)
                    stop.set()

    threading.Thread(target=dispatch, name="signals", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)


def cmd_snapshot(args) -> int:
    from reconciler.cli.inputs import load_snapshot
    from reconciler.core.leases import snapshot_to_json

    text = snapshot_to_json(load_snapshot(args))
    if args.output_file:
        try:
            with open(args.output_file, "w") as f:
                f.write(text)
        except OSError as exc:
            raise ReconcilerError(f"cannot write -o {args.output_file}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0


def cmd_bench(args) -> int:
    from reconciler.tools.bench import parse_nodes, run_bench

    try:
        nodes = parse_nodes(args.nodes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return run_bench(nodes, backend=args.backend, out_dir=args.out, quick=args.quick)


def cmd_demo(args) -> int:
    from reconciler.tools.demo import run_demo

    return run_demo(args.nodes, keep=args.keep, ipv6=args.ipv6)
