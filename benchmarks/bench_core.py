"""The pure core at 5,000 nodes: validate, desired state, plan.

Run: ``python -m pytest benchmarks/bench_core.py``.  Prints timings; asserts
only shapes (object counts, linear scaling), never wall-clock times.
"""
from __future__ import annotations

import dataclasses
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


def _subnet_choice_cluster(n: int):
    """``n`` leases taking the first ``n`` /24s of 10.0.0.0/8: a new node must look past them."""
    from reconciler.core.leases import encode_lease_value, parse_lease

    return [parse_lease(f"10.{i >> 8}.{i & 255}.0-24",
                        encode_lease_value(f"172.16.{i >> 8}.{i & 255}", "0e:00:00:00:%02x:%02x" % (i >> 8, i & 255), 1),
                        7) for i in range(1, n + 1)]


def test_choosing_a_subnet_among_5000_leases(benchmark):
    import ipaddress
    import random

    from reconciler.agent.acquire import choose_subnet

    config = parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    leases = _subnet_choice_cluster(5000)
    choice = benchmark(choose_subnet, config, leases, "198.18.0.1", ipaddress.ip_network("10.0.3.0/24"),
                       random.Random(1))
    assert choice.source == "random"


def test_subnet_choice_and_validation_scale_linearly():
    """500 vs 5,000 leases: ``choose_subnet`` and ``validate_leases`` (with 1 % MAC conflicts)
    cost about 10x, not 100x."""
    import ipaddress
    import random

    from reconciler.agent.acquire import choose_subnet

    config = parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')

    def best(fn) -> float:
        t = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return t

    def choose(n):
        leases = _subnet_choice_cluster(n)
        return best(lambda: choose_subnet(config, leases, "198.18.0.1", ipaddress.ip_network("10.0.3.0/24"),
                                          random.Random(1)))

    def validate(n):
        kvs = cluster_kvs(n)
        # 1 %: newcomers claiming an established node's VtepMAC and PublicIP (conflicts to decide).
        kvs += [dataclasses.replace(kv, key=kv.key.replace("/subnets/100.", "/subnets/101."), mod_revision=10 * n + i)
                for i, kv in enumerate(kvs[1:n // 100 + 1])]
        cfg = _config(kvs)
        return best(lambda: validate_leases(cfg, reversed(kvs), PREFIX))

    for name, fn in (("choose_subnet", choose), ("validate_leases", validate)):
        small, large = fn(500), fn(5000)
        ratio = large / small
        print(f"\n{name}: 500 leases {small*1e3:.1f} ms, 5,000 leases {large*1e3:.1f} ms, ratio {ratio:.1f}")
        assert ratio < 30, f"10x the leases cost {ratio:.1f}x the time in {name}: something is quadratic"
