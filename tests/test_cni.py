"""Pods made by the real CNI bridge plugin, configured as flannel's CNI plugin would, on nodes the agent built.

The delegate config comes from ``subnet.env`` exactly as flannel's CNI
plugin builds it (``reconciler.tools.lab.cni.flannel_delegate_config``); the
plugin is Debian's ``/usr/lib/cni/bridge``, run inside the node namespace.
``subnet.env`` says ``FLANNEL_IPMASQ=true``, as on a kube-flannel node
(``flanneld --ip-masq``), so the plugin adds no iptables rules of its own.

The story: ``apply`` builds node 1 (and node 2); the plugin adopts the
``cni0`` the agent made; the pods get flannel's routes; a later ``apply``
leaves the pods' veths alone; and pod 1 and pod 2 ping each other through
real VXLAN encapsulation over the veth underlay.  The tests marked ``root``
skip only when not root and ``CI`` is unset (``tests/conftest_netns.py``).
"""
from __future__ import annotations

import ipaddress

import pytest

from reconciler.tools.lab.cni import CniError, cni_add, cni_del, flannel_delegate_config, parse_subnet_env
from tests.netns import ip_json, netns, run
from tests.test_kernel_e2e import cli, mac_of, node_args, write_snapshot

NETWORK = "100.64.0.0/16"
GW_OF = {1: "100.64.1.1", 2: "100.64.2.1"}


def subnet_env(n: int, ipmasq: bool = True) -> str:
    """``/run/flannel/subnet.env`` of node n, byte for byte as flanneld writes it (docs/flannel-formats.md section 5.1)."""
    return (f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=100.64.{n}.1/24\nFLANNEL_MTU=1450\n"
            f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")


# ------------------------------------------------------------- the config

def test_the_delegate_config_is_flannels(tmp_path):
    conf = flannel_delegate_config(subnet_env(1, ipmasq=False), data_dir=str(tmp_path))
    assert conf == {
        "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "bridge": "cni0", "mtu": 1450,
        "ipMasq": True, "isGateway": True, "hairpinMode": True, "isDefaultGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "100.64.1.0/24"}]],
                 "routes": [{"dst": NETWORK}], "dataDir": str(tmp_path)},
    }
    # flanneld with --ip-masq: the plugin must not masquerade a second time.
    assert flannel_delegate_config(subnet_env(1), "other", data_dir="/x")["ipMasq"] is False
    assert flannel_delegate_config(subnet_env(1), "other", data_dir="/x")["name"] == "other"


def test_the_subnet_env_is_read_as_the_flannel_plugin_reads_it():
    dual = ("FLANNEL_NETWORK=100.64.0.0/16,100.65.0.0/16\nFLANNEL_SUBNET=100.64.3.1/24\n"
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\nFLANNEL_MTU=8950\n")
    assert parse_subnet_env(dual + "FLANNEL_IPMASQ=True\n") == {
        "networks": ["100.64.0.0/16", "100.65.0.0/16"], "subnet": "100.64.3.0/24",
        "ipv6_networks": ["fc00::/48"], "ipv6_subnet": "fc00:0:0:3::/64", "mtu": 8950,
        "ipmasq": False}                                   # Go compares with "true" only
    conf = flannel_delegate_config(dual + "FLANNEL_IPMASQ=false\n", data_dir="/d")
    assert conf["ipam"]["ranges"] == [[{"subnet": "100.64.3.0/24"}], [{"subnet": "fc00:0:0:3::/64"}]]
    assert conf["ipam"]["routes"] == [{"dst": "100.64.0.0/16"}, {"dst": "100.65.0.0/16"}, {"dst": "fc00::/48"}]
    assert conf["mtu"] == 8950 and conf["ipMasq"] is True


@pytest.mark.parametrize("missing", ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"])
def test_a_subnet_env_without_a_required_key_is_refused(missing):
    text = "".join(line + "\n" for line in subnet_env(1).splitlines() if not line.startswith(missing + "="))
    with pytest.raises(ValueError, match=missing):
        flannel_delegate_config(text, data_dir="/d")


# ------------------------------------------------------------ one node, one pod

def _pod_view(pod: str) -> dict:
    [eth0] = ip_json(pod, "-4 addr show dev eth0")
    routes = sorted((r["dst"], r.get("gateway"), r["dev"]) for r in ip_json(pod, "-4 route show"))
    return {"addresses": [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]], "mtu": eth0["mtu"],
            "routes": routes}


def _host_veth(node_ns: str, result: dict) -> dict:
    [host_if] = [i for i in result["interfaces"] if i["name"] not in ("cni0", "eth0") and "sandbox" not in i]
    [veth] = ip_json(node_ns, ["-d", "link", "show", host_if["name"]])
    return veth


@pytest.mark.root
def test_the_plugin_attaches_a_pod_to_the_agents_cni0(underlay_factory, tmp_path, capsys):
    node = underlay_factory(1).nodes[0]
    leases = write_snapshot(tmp_path / "leases.json", {1: mac_of(1), 2: mac_of(2)})
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
    assert rc == 0, out + err
    [cni0_before] = ip_json(node.ns, "addr show dev cni0")
    conf = flannel_delegate_config(subnet_env(1), data_dir=str(tmp_path / "cni"))

    with netns("pod1") as pod:
        result = cni_add(node.ns, pod, "pod-1", conf)
        [ipcfg] = result["ips"]
        assert ipaddress.ip_interface(ipcfg["address"]).network == ipaddress.ip_network("100.64.1.0/24")
        assert ipcfg["gateway"] == GW_OF[1]
        pod_ip = str(ipaddress.ip_interface(ipcfg["address"]).ip)

        # What the pod got: an address in the node's subnet and flannel's two routes.
        pod_view = _pod_view(pod)
        assert pod_view == {
            "addresses": [(pod_ip, 24)], "mtu": 1450,
            "routes": sorted([("default", GW_OF[1], "eth0"), (NETWORK, GW_OF[1], "eth0"),
                              ("100.64.1.0/24", None, "eth0")]),
        }
        # The node side: a veth port of the agent's cni0, hairpin on; cni0 was adopted, not rebuilt.
        veth = _host_veth(node.ns, result)
        assert veth["master"] == "cni0" and veth["linkinfo"]["info_slave_data"]["hairpin"] is True
        [cni0_after] = ip_json(node.ns, "addr show dev cni0")
        assert cni0_after["ifindex"] == cni0_before["ifindex"]
        assert [(a["local"], a["prefixlen"]) for a in cni0_after["addr_info"] if a["family"] == "inet"] == \
            [("100.64.1.1", 24)]
        assert run(node.ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"

        # A later apply leaves the pod alone: nothing to do, same port, same master.
        rc, out, err = cli(capsys, "plan", *node_args(leases, node.ns))
        assert rc == 0, out + err
        rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
        assert rc == 0 and "In sync" in out, out + err
        again = _host_veth(node.ns, result)
        assert (again["ifindex"], again["master"], again["address"]) == (veth["ifindex"], "cni0", veth["address"])
        assert _pod_view(pod) == pod_view

        # A peer leaving changes the agent's state, and still not the pod's.
        leases = write_snapshot(tmp_path / "leases.json", {1: mac_of(1)})
        rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
        assert rc == 0 and "3 deleted" in out, out + err
        assert _host_veth(node.ns, result)["ifindex"] == veth["ifindex"] and _pod_view(pod) == pod_view

        # host-local keeps its allocations under the test's dataDir, nowhere else.
        lease_file = tmp_path / "cni" / "cbr0" / pod_ip
        assert lease_file.exists()
        cni_del(node.ns, pod, "pod-1", conf)
        assert ip_json(node.ns, "link show master cni0") == []
        assert not lease_file.exists()


@pytest.mark.root
def test_a_plugin_error_carries_the_plugins_message(underlay_factory, tmp_path, capsys):
    """flannel #1850: a cni0 holding another subnet's gateway makes every pod ADD fail."""
    node = underlay_factory(1).nodes[0]
    leases = write_snapshot(tmp_path / "leases.json", {1: mac_of(1)})
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
    assert rc == 0, out + err
    wrong = flannel_delegate_config(subnet_env(2), data_dir=str(tmp_path / "cni"))     # node 2's subnet
    with netns("pod") as pod:
        with pytest.raises(CniError) as exc:
            cni_add(node.ns, pod, "pod-x", wrong)
    assert '"cni0" already has an IP address different from 100.64.2.1/24' in exc.value.msg
    assert exc.value.msg in str(exc.value) and "CNI ADD pod-x" in str(exc.value)
    assert exc.value.code is not None


# ------------------------------------------------------ two nodes, real VXLAN

def _vxlan_counters(ns: str) -> tuple[int, int]:
    [link] = ip_json(ns, "-s link show flannel.1")
    return link["stats64"]["tx"]["packets"], link["stats64"]["rx"]["packets"]


@pytest.mark.root
def test_pods_on_two_nodes_ping_each_other_through_vxlan(underlay_factory, tmp_path, capsys):
    net = underlay_factory(2)
    leases = write_snapshot(tmp_path / "leases.json", {1: mac_of(1), 2: mac_of(2)})
    for node in net.nodes:
        rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
        assert rc == 0, out + err

    with netns("pod1") as pod1, netns("pod2") as pod2:
        pods, ips = {1: pod1, 2: pod2}, {}
        for n, node in enumerate(net.nodes, start=1):
            conf = flannel_delegate_config(subnet_env(n), data_dir=str(tmp_path / f"cni-{n}"))
            result = cni_add(node.ns, pods[n], f"pod-{n}", conf)
            ips[n] = str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)
            assert ips[n].startswith(f"100.64.{n}.")

        before = {n: _vxlan_counters(node.ns) for n, node in enumerate(net.nodes, start=1)}
        for src, dst in ((1, 2), (2, 1)):
            proc = run(pods[src], "ping", "-c", "2", "-W", "2", ips[dst], check=False)
            assert proc.returncode == 0, f"pod {src} -> pod {dst} ({ips[dst]}): {proc.stdout}{proc.stderr}"
        after = {n: _vxlan_counters(node.ns) for n, node in enumerate(net.nodes, start=1)}
        for n in (1, 2):
            # Each node sent its echo requests and its echo replies through flannel.1 (VXLAN), and
            # received the other's: at least 2 + 2 (the first request may be lost to ARP).
            tx, rx = (after[n][0] - before[n][0], after[n][1] - before[n][1])
            assert tx >= 3 and rx >= 3, (n, before[n], after[n])
        # Both agents are still in sync with pods attached.
        for node in net.nodes:
            rc, out, err = cli(capsys, "plan", *node_args(leases, node.ns))
            assert rc == 0, out + err
