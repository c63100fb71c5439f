"""The agent loop in dual stack, against a real etcd and the model kernel (no root needed):
--public-ipv6, the lease and subnet.env it writes, peers' IPv6 entries, failing static with
IPv6 objects, and IPv6-only refused by ``run`` with one error line.
"""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from reconciler.core.config import parse_network_config
from reconciler.agent.daemon import Agent, AgentOptions
from reconciler.core.errors import ConfigError
from reconciler.core.model import Link, Route
from tests.model_kernel import ModelKernel
from tests.test_daemon import start_agent, wait_for  # noqa: F401 (a fixture): the same agent harness

CONFIG = ('{"Network":"100.64.0.0/16","SubnetLen":24,"SubnetMin":"100.64.100.0",'
          '"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48","IPv6SubnetMin":"fd00:100:64:100::",'
          '"Backend":{"Type":"vxlan"}}')
ME, ME6 = "198.18.0.1", "fd00:198:18::1"
PEER = ('{"PublicIP":"198.18.0.2","PublicIPv6":"fd00:198:18::2","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:02:00"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:64:60:02:00"}}')
PEER_KEY = "100.64.2.0-24&fd00:100:64:2::-64"
DEV6 = "flannel-v6.1"


def node_kernel() -> ModelKernel:
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", f"{ME}/24")
    k.add_address("eth0", f"{ME6}/64")
    return k


def v6_routes(kernel: ModelKernel) -> dict[str, Route]:
    return {r.dst: r for r in kernel.dump([DEV6]).of("route").values() if r.dev == DEV6}


def test_dual_stack_agent_with_public_ipv6(etcd_store, start_agent, tmp_path):
    store = etcd_store
    store.put_config(CONFIG)
    store.put(store.subnets_prefix + PEER_KEY, PEER, store.grant(600))
    kernel = node_kernel()
    # A NAT'd IPv6 address: the lease advertises it and the v6 device uses it as local.
    agent = start_agent(store, kernel, public_ipv6="fd00:198:18::99")
    agent.ready()

    [mine] = [kv for kv in store.snapshot().kvs if '"198.18.0.1"' in kv.value]
    v4_key, v6_key = mine.key.rsplit("/", 1)[1].split("&")
    assert v4_key.startswith("100.64.1") and v6_key.startswith("fd00:100:64:1") and v6_key.endswith("::-64")
    devs = kernel.dump(["flannel.1", DEV6])
    mac, mac6 = devs.get("link", "flannel.1").mac, devs.get("link", DEV6).mac
    assert mine.value == ('{"PublicIP":"198.18.0.1","PublicIPv6":"fd00:198:18::99","BackendType":"vxlan",'
                          '"BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}'
                          % (mac, mac6))
    assert devs.get("link", DEV6).local == "fd00:198:18::99" and devs.get("link", DEV6).mtu == 1430
    assert set(v6_routes(kernel)) == {"fd00:100:64:2::/64"}
    env = (tmp_path / "subnet.env").read_text()
    assert f"FLANNEL_IPV6_NETWORK=fd00:100:64::/48\nFLANNEL_IPV6_SUBNET={v6_key.replace('::-64', '::1/64')}\n" in env
    # The metrics count IPv6 objects like any other.
    assert agent.agent.metrics.get("flannel_reconciler_leases") == 2
    assert agent.agent.metrics.get("flannel_reconciler_operations_total", kind="route", op="create",
                                   result="ok") >= 2


def test_fail_static_with_ipv6_objects(etcd_server, start_agent):
    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        store.put(store.subnets_prefix + PEER_KEY, PEER, store.grant(600))
        kernel = node_kernel()
        agent = start_agent(store, kernel)
        agent.ready()
        assert "fd00:100:64:2::/64" in v6_routes(kernel)
        etcd_server.stop()
        # While etcd is away: a stale owned IPv6 route appears and a desired one vanishes.
        kernel.add_route(Route("fd00:100:64:77::/64", "fd00:100:64:77::", DEV6, True, 1024, 73))
        with kernel._rtnl:
            kernel.routes = {k: r for k, r in kernel.routes.items() if r.dst != "fd00:100:64:2::/64"}
        wait_for(lambda: "fd00:100:64:2::/64" in v6_routes(kernel), what="IPv6 repair while etcd is down")
        wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_etcd_up") == 0, what="etcd marked down")
        agent.resyncs(2)
        assert "fd00:100:64:77::/64" in v6_routes(kernel), "deleted an IPv6 route while failing static"
        etcd_server.start()
        wait_for(lambda: "fd00:100:64:77::/64" not in v6_routes(kernel), timeout=30,
                 what="stale IPv6 route removed once etcd is back")


V6ONLY = '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48","Backend":{"Type":"vxlan"}}'


def test_ipv6_only_stops_the_agent_before_anything_is_written(etcd_store, tmp_path):
    etcd_store.put_config(V6ONLY)
    kernel = node_kernel()
    agent = Agent(etcd_store, kernel, AgentOptions(iface="eth0", subnet_file=str(tmp_path / "subnet.env")))
    with pytest.raises(ConfigError, match="IPv6-only is not supported with etcd"):
        agent.run(threading.Event())
    assert kernel.dump(["flannel.1", DEV6, "cni0"]).of("link") == {}
    assert [kv for kv in etcd_store.snapshot().kvs if "/subnets/" in kv.key] == []
    assert parse_network_config(V6ONLY).enable_ipv4 is False


def test_run_refuses_ipv6_only_with_one_error_line(etcd_shared, etcd_store, tmp_path):
    etcd_store.put_config(V6ONLY)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "run", "--etcd-endpoints", etcd_shared.endpoint,
                           "--etcd-prefix", etcd_store.prefix, "--subnet-file", str(tmp_path / "subnet.env"),
                           "--public-ip", ME],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in errors if "IPv6-only is not supported with etcd" in line] and len(errors) == 1
    assert "Traceback" not in proc.stderr
