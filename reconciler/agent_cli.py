"""The long-running and etcd-facing commands: ``run``, ``snapshot``, ``demo``."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from .errors import ReconcilerError

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
    from . import flags

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
    pd.set_defaults(handler=cmd_demo)


def cmd_run(args) -> int:
    from .cli import check_underlay_address, first_iface, open_backend, open_store
    from .daemon import Agent, AgentOptions

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("flannel_reconciler").info("signal %d: stopping, kernel state left in place", signum)
        stop.set()

    opts = AgentOptions(
        public_ip=args.public_ip, iface=first_iface(args), underlay_mtu=args.underlay_mtu,
        subnet_file=args.subnet_file, resync_interval=args.resync_interval, healthz_ip=args.healthz_ip,
        healthz_port=args.healthz_port, metrics_port=args.metrics_port, ip_masq=args.ip_masq,
    )
    with open_store(args) as store, open_backend(args) as backend:
        # The operator's mistakes are refused before the agent starts; the
        # agent itself logs and retries and never exits.
        check_underlay_address(args, backend.underlay(first_iface(args)))
        # Installed only now: pyroute2 forks a helper to open a namespace
        # socket and stops it with SIGTERM; that child must not inherit ours.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        Agent(store, backend, opts).run(stop)
    return 0


def cmd_snapshot(args) -> int:
    from .cli import load_snapshot
    from .leases import snapshot_to_json

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


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.nodes, keep=args.keep)
