"""Per-event cost of the incremental path, against cluster size (the model kernel: no kernel time).

Run: ``python -m pytest benchmarks/bench_incremental.py -s``.  The agent's own
cycle handles one lease event (a peer's VtepMAC changes: 3 writes) and one
unchanged re-put (no write) in clusters of 1,000, 5,000 and 16,000 nodes.
The figure that matters is the ratio between sizes: an incremental cycle
costs the same at 16,000 nodes as at 1,000.  Asserts shapes only (counts,
a ratio far from linear), never a wall-clock time.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import pytest

from benchmarks.conftest import cluster_kvs
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams
from reconciler.etcd.store import WatchEvent
from reconciler.core.leases import RawKV, encode_lease_value
from reconciler.core.model import Link
from reconciler.agent.daemon import Agent
from tests.agent_harness import offline_agent, queue_listing
from tests.model_kernel import ModelKernel

ME = "198.18.0.1"


def converged_agent(n: int, tmp: str) -> tuple[Agent, ModelKernel, list[RawKV]]:
    kvs = cluster_kvs(n)
    config = parse_network_config(kvs[0].value)
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", f"{ME}/15")
    node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0")
    agent = offline_agent(k, config, node, f"{tmp}/subnet.env")
    queue_listing(agent, kvs[1:])
    agent.cycle({"relist"})
    agent.cycle({"resync"})
    return agent, k, kvs


def _event_cost(agent: Agent, kv: RawKV, rev: int) -> float:
    agent.queue_lease_event(WatchEvent("put", kv, rev))
    t0 = time.perf_counter()
    agent.cycle({"lease"})
    return time.perf_counter() - t0


def per_event(n: int, rounds: int = 200) -> tuple[float, float, int]:
    """Median seconds of one MAC-change cycle and of one unchanged re-put cycle; writes per change."""
    with tempfile.TemporaryDirectory() as tmp:
        agent, k, kvs = converged_agent(n, tmp)
        change, reput = [], []
        writes0, dumps0 = len(k.writes), k.dumps
        rev = 10 * n
        for i in range(rounds):
            kv = kvs[2 + (i % (n - 2))]
            ip = f"198.{18 + ((i + 2) >> 16)}.{((i + 2) >> 8) & 255}.{(i + 2) & 255}"
            moved = RawKV(kv.key, encode_lease_value(ip, "0a:59:%02x:%02x:00:01" % (i >> 8 & 255, i & 255), 1),
                          kv.lease, rev)
            rev += 1
            change.append(_event_cost(agent, moved, rev))
            rev += 1
            reput.append(_event_cost(agent, RawKV(moved.key, moved.value, moved.lease, rev), rev))
        writes = (len(k.writes) - writes0) / rounds
        assert k.dumps == dumps0, "an incremental event dumped the kernel"
        return statistics.median(change), statistics.median(reput), writes


@pytest.mark.parametrize("n", [1000, 5000])
def test_one_lease_event(benchmark, n):
    with tempfile.TemporaryDirectory() as tmp:
        agent, k, kvs = converged_agent(n, tmp)
        state = {"rev": 10 * n, "i": 0}

        def one():
            i = state["i"] = state["i"] + 1
            kv = kvs[2 + i % (n - 2)]
            ip = f"198.{18 + ((i + 2) >> 16)}.{((i + 2) >> 8) & 255}.{(i + 2) & 255}"
            state["rev"] += 1
            moved = RawKV(kv.key, encode_lease_value(ip, "0a:59:%02x:%02x:00:02" % (i >> 8 & 255, i & 255), 1),
                          kv.lease, state["rev"])
            agent.queue_lease_event(WatchEvent("put", moved, state["rev"]))
            return agent.cycle({"lease"})

        report = benchmark(one)
        assert len(report.plan) == 3


def test_event_cost_does_not_grow_with_the_cluster():
    small = per_event(1000)
    large = per_event(16000)
    print(f"\none lease event (VtepMAC change), median: 1,000 nodes {small[0]*1e6:.0f} us, "
          f"16,000 nodes {large[0]*1e6:.0f} us (ratio {large[0]/small[0]:.2f}); unchanged re-put "
          f"{small[1]*1e6:.0f} / {large[1]*1e6:.0f} us; writes per change {small[2]:.1f} / {large[2]:.1f}")
    assert small[2] == large[2] == 3.0
    # 16x the nodes: a linear cost would be ~16x.  Constant stays near 1.
    assert large[0] / small[0] < 4, "per-event cost grows with the cluster"
