"""``audit`` of a 20,000-lease cluster and ``plan --config`` of a 5,000-node one, against the work
every node already does with the same leases (``validate_leases``; one node's ``compute_cycle``).

Run: ``python -m pytest benchmarks/bench_audit.py -s``.  Prints timings and ratios; asserts only
ratios (shapes), never wall-clock times: the audit must stay a small multiple of validating the
leases once, and the what-if a small multiple of one node's cycle, not one cycle per node.
"""
from __future__ import annotations

import json
import time

from benchmarks.conftest import PREFIX, cluster_kvs
from reconciler.core.audit import audit_cluster
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams
from reconciler.core.leases import RawKV, validate_leases
from reconciler.core.model import KernelState
from reconciler.core.reconcile import compute_cycle
from reconciler.core.whatif import cluster_whatif


def _best(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _kvs_20000():
    """20,000 nodes need more than the 16,383 /24s of a /10: /26 subnets (65,535 of them)."""
    kvs = []
    for kv in cluster_kvs(20000)[1:]:
        a, b, c, _ = kv.key.rsplit("/", 1)[1].split("-")[0].split(".")
        i = (int(b) - 64) << 8 | int(c)
        subnet = f"100.{64 + (i >> 10)}.{(i >> 2) & 255}.{(i & 3) << 6}-26"
        kvs.append(RawKV(f"{PREFIX}/subnets/{subnet}", kv.value, kv.lease, kv.mod_revision))
    config = json.dumps({"Network": "100.64.0.0/10", "SubnetLen": 26, "Backend": {"Type": "vxlan"}})
    return [RawKV(f"{PREFIX}/config", config)] + kvs


def test_audit_20000_leases(benchmark):
    kvs = _kvs_20000()
    config = parse_network_config(kvs[0].value)
    ttls = {kv.lease: 86000 for kv in kvs if kv.lease}
    result = benchmark.pedantic(audit_cluster, (config, kvs, PREFIX, 1, ttls), rounds=3, iterations=1)
    assert result.clean and result.counts["ok"] == 20000
    audit_s = _best(lambda: audit_cluster(config, kvs, PREFIX, 1, ttls))
    base_s = _best(lambda: validate_leases(config, kvs, PREFIX))
    ratio = audit_s / base_s
    print(f"\naudit 20,000 leases {audit_s * 1e3:.0f} ms; validate_leases alone {base_s * 1e3:.0f} ms; "
          f"ratio {ratio:.2f}")
    # The audit validates once, parses once more for standings, and adds linear checks.
    assert ratio < 4, f"audit costs {ratio:.1f}x validating the leases: something is not linear"


def test_plan_config_5000_nodes(benchmark):
    kvs = cluster_kvs(5000)
    old = parse_network_config(kvs[0].value)
    new_json = json.loads(kvs[0].value)
    new_json["Backend"]["MTU"] = 1400
    new = parse_network_config(json.dumps(new_json))
    result = benchmark.pedantic(cluster_whatif, (old, new, kvs, PREFIX), rounds=1, iterations=1)
    assert len(result.nodes) == 5000 and result.totals() == {("update", "link"): 10000}
    whatif_s = _best(lambda: cluster_whatif(old, new, kvs, PREFIX), repeat=1)
    node = NodeParams(public_ip="198.18.0.1")
    base_s = _best(lambda: compute_cycle(old, kvs, PREFIX, node, KernelState()))
    ratio = whatif_s / base_s
    print(f"\nplan --config, 5,000 nodes: {whatif_s * 1e3:.0f} ms; one node's compute_cycle {base_s * 1e3:.0f} ms; "
          f"ratio {ratio:.1f} (planning every node in full would be about 5,000)")
    assert ratio < 40, f"the what-if costs {ratio:.0f} node cycles: it is planning node by node"
