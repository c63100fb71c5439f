"""Simulated clusters for the benchmarks: N nodes' leases, as etcd would hold them."""
from __future__ import annotations

import json

import pytest

from reconciler.core.leases import RawKV, encode_lease_value

PREFIX = "/coreos.com/network"
CONFIG = json.dumps({"Network": "100.64.0.0/10", "SubnetLen": 24, "Backend": {"Type": "vxlan"}})


def cluster_kvs(n: int) -> list[RawKV]:
    """``n`` nodes: subnets counted up from 100.64.1.0/24, PublicIPs in 198.18.0.0/15."""
    kvs = [RawKV(f"{PREFIX}/config", CONFIG)]
    for i in range(1, n + 1):
        subnet = f"100.{64 + (i >> 8)}.{i & 255}.0-24"
        ip = f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        mac = "0a:58:%02x:%02x:%02x:00" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
        kvs.append(RawKV(f"{PREFIX}/subnets/{subnet}", encode_lease_value(ip, mac, 1), lease=7000 + i,
                         mod_revision=i))
    return kvs


@pytest.fixture(scope="session")
def kvs_5000() -> list[RawKV]:
    return cluster_kvs(5000)
