"""The long-running and etcd-facing commands: ``run``, ``snapshot``, ``demo``, ``bench``."""
from __future__ import annotations

import logging
import signal
import sys
import threading

__all__ = ["add_commands"]


def _bool_env(name: str) -> bool:
    import os

    return os.environ.get("FLANNELD_" + name, "").lower() in ("1", "true", "yes")


def add_commands(sub, add_source_args, add_node_args) -> None:
    """Register the agent's subcommands on the main parser."""
    import os

    pr = sub.add_parser("run", help="the node agent: acquire a lease, then reconcile on every change")
    add_source_args(pr)
    add_node_args(pr, offline_ok=False)
    pr.add_argument("--subnet-file", default=os.environ.get("FLANNELD_SUBNET_FILE", "/run/flannel/subnet.env"))
    pr.add_argument("--resync-interval", type=float, default=30.0,
                    help="seconds between full resyncs, jittered by 10%% (default 30)")
    pr.add_argument("--healthz-ip", default=os.environ.get("FLANNELD_HEALTHZ_IP", "0.0.0.0"))
    pr.add_argument("--healthz-port", type=int, default=int(os.environ.get("FLANNELD_HEALTHZ_PORT", "0")),
                    help="serve /healthz and /readyz on this port (0: off)")
    pr.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0: off)")
    pr.add_argument("--ip-masq", action="store_true", default=_bool_env("IP_MASQ"),
                    help="recorded in subnet.env as FLANNEL_IPMASQ (the agent itself writes no iptables rules)")
    pr.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    pr.set_defaults(handler=cmd_run)

    ps = sub.add_parser("snapshot", help="write the etcd state as a --leases-file snapshot")
    add_source_args(ps)
    ps.add_argument("-o", "--output-file", help="write here instead of standard output")
    ps.set_defaults(handler=cmd_snapshot)

    pd = sub.add_parser("demo", help="a private etcd, N nodes as network namespaces, pods, and a ping matrix")
    pd.add_argument("--nodes", type=int, default=3)
    pd.add_argument("--keep", action="store_true", help="leave the demo running until Ctrl-C")
    pd.set_defaults(handler=cmd_demo)

    pb = sub.add_parser("bench", help="cluster-scale benchmarks: the real agent against a simulated cluster (root)")
    pb.add_argument("--nodes", default="1000,5000",
                    help="comma-separated cluster sizes (default %(default)s; e.g. 1000,5000,10000,20000)")
    pb.add_argument("--backend", choices=("pyroute2", "batched"), default="pyroute2",
                    help="the agent's --netlink-backend (default %(default)s, the agent's own default)")
    pb.add_argument("--out", default="bench-results", help="directory for the JSON file and the plots")
    pb.add_argument("--quick", action="store_true",
                    help="CI smoke mode: fewer changes, 5 s idle window and resync (every scenario still runs)")
    pb.set_defaults(handler=cmd_bench)


def cmd_run(args) -> int:
    from .cli import open_backend, open_store
    from .daemon import Agent, AgentOptions

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("flannel_reconciler").info("signal %d: stopping, kernel state left in place", signum)
        stop.set()

    opts = AgentOptions(
        public_ip=args.public_ip, iface=args.iface, underlay_mtu=args.underlay_mtu,
        subnet_file=args.subnet_file, resync_interval=args.resync_interval, healthz_ip=args.healthz_ip,
        healthz_port=args.healthz_port, metrics_port=args.metrics_port, ip_masq=args.ip_masq,
    )
    if args.leases_file:
        raise SystemExit("error: run reads etcd; --leases-file is for plan/apply/show")
    with open_store(args) as store, open_backend(args) as backend:
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
        with open(args.output_file, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_bench(args) -> int:
    from .bench import parse_nodes, run_bench

    try:
        nodes = parse_nodes(args.nodes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return run_bench(nodes, backend=args.backend, out_dir=args.out, quick=args.quick)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.nodes, keep=args.keep)
