"""Bytes per lease of the agent's incremental state, by structure, built in-process.

``python3 -m reconciler.tools.bench.state_memory --nodes 1000,5000,20000`` builds, for N
synthetic leases, what the agent holds after convergence: the ``LeaseIndex`` from a listing,
the ``DesiredIndex`` from it, and a ``Tracker`` whose believed view is what a resync dump gives
(each desired object written to netlink bytes with the agent's encoders and read back with the
dump decoders the agent uses, so the believed objects are fresh ones, as the kernel's answer
makes them).  It reports:

* the bytes traced by ``tracemalloc`` while building, per lease, grouped by file;
* a walk of each structure (``sys.getsizeof`` of every object reachable from it, each object
  counted once, in the order index, desired, tracker: what the tracker shares with the desired
  state is counted under the desired state).

No kernel, no etcd, no threads: the figures are deterministic for a given Python and the same
with or without the compiled fast path (the decoders give equal values).  docs/memory.md has
the figures and what they led to.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from dataclasses import dataclass
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any, Iterable

from reconciler.core.config import NetworkConfig, parse_network_config
from reconciler.core.desired import NodeParams
from reconciler.core.leases import RawKV, encode_lease_value
from reconciler.core.model import Fdb, KernelState, Neigh, Route
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import OpResult
from reconciler.core.underlay_guard import UnderlayGuard
from reconciler.incremental.desired_index import DesiredIndex
from reconciler.incremental.lease_index import LeaseIndex
from reconciler.incremental.tracker import Tracker

__all__ = ["AgentState", "build_state", "cluster_kvs", "deep_sizes", "measure"]

PREFIX = "/coreos.com/network"
#: /26 subnets: 100.64.0.0/10 holds 65,536 of them (only 16,384 /24s).
CONFIG = json.dumps({"Network": "100.64.0.0/10", "SubnetLen": 26, "Backend": {"Type": "vxlan"}})
#: This node's PublicIP: the first synthetic lease's.
ME = "198.18.0.1"


def cluster_kvs(n: int) -> list[RawKV]:
    """``n`` leases as flanneld writes them: subnets from 100.64.0.64/26, PublicIPs in 198.18.0.0/15."""
    kvs = []
    for i in range(1, n + 1):
        a = (100 << 24 | 64 << 16) + (i << 6)
        subnet = f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}-26"
        ip = f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        mac = "0a:58:%02x:%02x:%02x:00" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
        kvs.append(RawKV(f"{PREFIX}/subnets/{subnet}", encode_lease_value(ip, mac, 1), lease=7000 + i,
                         mod_revision=i, create_revision=i))
    return kvs


@dataclass
class AgentState:
    index: LeaseIndex
    desired: DesiredIndex
    tracker: Tracker


def _as_dumped(objs: Iterable[Any]) -> KernelState:
    """What a dump of the kernel holding ``objs`` gives: each route, neighbour and FDB entry
    encoded as the agent writes it and decoded by the agent's dump decoders (fresh values,
    protocol 73 on routes); links and addresses as they are (a handful)."""
    from reconciler.kernel.netlink import wire
    import _fastpath
    decoders = _fastpath.DECODERS if _fastpath.AVAILABLE else wire.DECODERS
    names = {2: "eth0", 3: "flannel.1", 4: "cni0"}
    index = {v: k for k, v in names.items()}
    state = KernelState()
    for o in objs:
        if isinstance(o, Route):
            buf = wire.encode_newroute(1, o, index.get(o.dev) if o.dev else None)
            # The kernel reports our routes with our protocol number; the request has it too.
            got = decoders["route"](buf, names, set(names))
        elif isinstance(o, Neigh):
            got = decoders["neigh"](wire.encode_newneigh(1, o.ip, o.mac, index[o.dev]), index[o.dev], o.dev)
        elif isinstance(o, Fdb):
            got = decoders["fdb"](wire.encode_newfdb(1, o.mac, o.dst, index[o.dev]), index[o.dev], o.dev)
        else:
            got = [o]
        assert len(got) == 1 and got[0] == o, (o, got)
        state.add(got[0])
    return state


def build_state(n: int, kvs: list[RawKV] | None = None) -> AgentState:
    """The agent's state after convergence and a resync dump, with ``n`` leases (ours included)."""
    kvs = cluster_kvs(n) if kvs is None else kvs
    config: NetworkConfig = parse_network_config(CONFIG)
    node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0")
    index = LeaseIndex(config, PREFIX, UnderlayGuard.of(ME, config.network, ()))
    desired = DesiredIndex(config, node)
    tracker = Tracker(FlannelOwnership(config, node.bridge))
    tracker.replace_live(KernelState())
    desired.update(index, index.replace_all(kvs))
    # The first cycle: everything written and ACKed (the believed view from the ACKs) ...
    plan = tracker.plan(desired.state)
    tracker.settle(plan, [OpResult(c, True) for c in plan.changes])
    # ... then a dump, as the resync (and the dump after the device writes) makes it.
    tracker.replace_live(_as_dumped(desired.state))
    # ... and the cycle that follows it: a full plan with nothing to do.
    plan = tracker.plan(desired.state)
    assert not plan.changes, plan.summary()
    tracker.settle(plan, [])
    return AgentState(index, desired, tracker)


_SKIP = (type, ModuleType, FunctionType, BuiltinFunctionType, MethodType)


def deep_sizes(roots: list[tuple[str, Any]]) -> dict[str, int]:
    """``sys.getsizeof`` of every object reachable from each root, each object counted once, under
    the first root (in order) that reaches it.  Classes, functions and modules are not counted."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for name, root in roots:
        total = 0
        todo = [root]
        while todo:
            obj = todo.pop()
            if id(obj) in seen or isinstance(obj, _SKIP):
                continue
            seen.add(id(obj))
            total += sys.getsizeof(obj)
            if isinstance(obj, dict):
                todo.extend(obj.keys())
                todo.extend(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                todo.extend(obj)
            elif not isinstance(obj, (str, bytes, int, float, bool)) and obj is not None:
                for cls in type(obj).__mro__:
                    for slot in getattr(cls, "__slots__", ()):
                        if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                            todo.append(getattr(obj, slot))
                d = getattr(obj, "__dict__", None)
                if d is not None and not isinstance(d, type(type.__dict__)):
                    todo.append(d)
        out[name] = total
    return out


def structures(state: AgentState) -> list[tuple[str, Any]]:
    """The agent's per-lease structures, in the order ``deep_sizes`` charges shared objects."""
    ix, d, t = state.index, state.desired, state.tracker
    return [
        ("index: kvs and parsed leases (_entries)", ix._entries),
        ("index: valid", ix.valid),
        ("index: claims (_claimants)", ix._claimants),
        ("index: by PublicIP", ix._by_public_ip),
        ("index: skipped", ix.skipped),
        ("desired: state", d.state),
        ("desired: by lease", d._by_lease),
        # Older versions kept which lease holds each object key apart; none does now.
        ("desired: holder", getattr(d, "_holder", {})),
        ("tracker: live (believed)", t.live),
        ("tracker: other", (t.foreign_routes, t.foreign_nexthops, t.dirty, t.conflicts)),
    ]


def measure(n: int, top: int = 12) -> dict[str, Any]:
    """Bytes per lease: traced while building (total and by file), and by structure."""
    kvs = cluster_kvs(n)            # the listing itself is the etcd client's, not the state's
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = build_state(n, kvs)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "filename")
    traced = sum(s.size_diff for s in stats)
    by_file = [(s.traceback[0].filename.rsplit("/reconciler/", 1)[-1], s.size_diff / n)
               for s in stats[:top] if s.size_diff > 0]
    del kvs
    sizes = deep_sizes(structures(state))
    return {"n": n, "traced_per_lease": traced / n, "by_file": by_file,
            "by_structure": {k: v / n for k, v in sizes.items()},
            "walked_per_lease": sum(sizes.values()) / n}


#: What the agent imports (batched backend, the default), heaviest suspects first one at a time.
AGENT_IMPORTS = ("ipaddress", "json", "dataclasses", "reconciler.core.model", "reconciler.incremental.tracker",
                 "grpc", "pyetcd", "reconciler.etcd.store", "reconciler.etcd.watch", "prometheus_client",
                 "reconciler.agent.metrics", "reconciler.kernel.netlink.batched",
                 "reconciler.kernel.netlink.kernel_events", "reconciler.agent.daemon", "reconciler.cli.agent",
                 "reconciler.cli.main")

_IMPORT_PROBE = """
import importlib, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
prev = rss()
print(f"{'(interpreter)':42s} {prev:6.1f} MiB")
for name in sys.argv[1:]:
    importlib.import_module(name)
    now = rss()
    print(f"{name:42s} +{now - prev:5.1f} MiB  (total {now:5.1f})")
    prev = now
print(f"{len(sys.modules)} modules; pyroute2 loaded: {any(m.startswith('pyroute2') for m in sys.modules)}")
"""


def import_steps(modules: Iterable[str] = AGENT_IMPORTS) -> str:
    """RSS after each import, in a fresh interpreter (the agent's import baseline)."""
    import subprocess
    return subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *modules], check=True, capture_output=True,
                          text=True).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="state_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1000,5000,20000", help="comma-separated lease counts")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--imports", action="store_true", help="the import baseline instead: RSS after each import")
    args = ap.parse_args(argv)
    if args.imports:
        print(import_steps(), end="")
        return 0
    results = [measure(int(n)) for n in args.nodes.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['n']:,} leases: traced {r['traced_per_lease']:,.0f} B/lease, "
              f"walked {r['walked_per_lease']:,.0f} B/lease")
        for name, b in r["by_structure"].items():
            print(f"  {name:42s} {b:8,.0f}")
        print("  traced by file:")
        for name, b in r["by_file"]:
            print(f"    {name:40s} {b:8,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
