"""The pure core at 5,000 nodes: validate, desired state, plan.

Run: ``python -m pytest benchmarks/bench_core.py``.  Prints timings; asserts
only shapes (object counts, linear scaling), never wall-clock times.
"""
from __future__ import annotations

import time

from benchmarks.conftest import PREFIX, cluster_kvs
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.leases import validate_leases
from reconciler.core.model import KernelState
from reconciler.core.plan import make_plan
from reconciler.core.reconcile import compute_cycle

NODE = NodeParams(public_ip="198.18.0.1", underlay="eth0")


def _config(kvs):
    return parse_network_config(kvs[0].value)


def test_validate_5000_leases(benchmark, kvs_5000):
    config = _config(kvs_5000)
    leases, skipped = benchmark(validate_leases, config, kvs_5000, PREFIX)
    assert len(leases) == 5000 and not skipped


def test_cold_plan_5000_nodes(benchmark, kvs_5000):
    """Everything to create: 2 links, 2 addresses, 3 x 4,999 entries."""
    config = _config(kvs_5000)
    cycle = benchmark(compute_cycle, config, kvs_5000, PREFIX, NODE, KernelState())
    assert len(cycle.plan) == 4 + 3 * 4999


def test_steady_state_plan_5000_nodes(benchmark, kvs_5000):
    """The common case of a periodic resync: the kernel is right, the plan is empty."""
    config = _config(kvs_5000)
    leases, _ = validate_leases(config, kvs_5000, PREFIX)
    desired = desired_state(config, leases, NODE)
    live = KernelState(desired)
    plan = benchmark(make_plan, desired, live)
    assert plan.in_sync


def test_core_scales_linearly():
    """1,000 vs 5,000 nodes: the time ratio must look like 5, not 25 (quadratic)."""
    def timed(n):
        kvs = cluster_kvs(n)
        config = _config(kvs)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            compute_cycle(config, kvs, PREFIX, NODE, KernelState())
            best = min(best, time.perf_counter() - t0)
        return best

    small, large = timed(1000), timed(5000)
    ratio = large / small
    print(f"\ncompute_cycle: 1,000 nodes {small*1e3:.1f} ms, 5,000 nodes {large*1e3:.1f} ms, ratio {ratio:.1f}")
    assert ratio < 12, f"5x the nodes cost {ratio:.1f}x the time: something is quadratic"
