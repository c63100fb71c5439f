"""``flannel-reconciler demo``: it works, and it leaves nothing behind, not even when it fails.

"Nothing behind" is checked from outside: no namespace with the demo's
prefix and this process's PID (the demo names them ``frd-<pid>-<n>``), no
process whose command line mentions the demo's work directory (etcd's data
dir and every agent's subnet.env are inside it), and no work directory.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from reconciler.tools import demo
from reconciler.cli.main import main
from reconciler.tools.lab import cni as lab_cni
from reconciler.tools.lab.netns import DEMO_PREFIX
from tests.conftest_etcd import require_etcd
from tests.conftest_netns import require_root


def our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = f"{DEMO_PREFIX}-{os.getpid()}-"
    return [line.split()[0] for line in out.splitlines() if line.startswith(mine)]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def work_dir(output: str) -> str:
    m = re.search(r"work directory (\S+), removed at the end", output)
    assert m, output
    return m.group(1)


def assert_nothing_left(workdir: str) -> None:
    assert our_namespaces() == []
    assert processes_mentioning(workdir) == []
    assert not os.path.exists(workdir)


@pytest.fixture
def root_and_etcd():
    require_root()
    require_etcd()


@pytest.mark.root
@pytest.mark.etcd
def test_the_demo_builds_a_cluster_whose_pods_all_talk(root_and_etcd, capsys):
    rc = demo.run_demo(2)
    out, err = capsys.readouterr()
    assert rc == 0, out + err

    # Each node's plan was run and was in sync.
    assert out.count("-> exit 0: in sync") == 2, out
    # The matrix: a header, one row per pod, a summary.
    assert re.search(r"from \\ to\s+pod 1\s+pod 2\n\s+pod 1\s+-\s+ok\n\s+pod 2\s+ok\s+-\n", out), out
    assert "2/2 pod pairs reachable" in out
    # FORWARD DROP on every node, rules in every node's listing, and a pod out through masquerading.
    assert out.count("iptables FORWARD policy DROP") == 2, out
    assert len(re.findall(r'\[ok\]\s+rule iptables-(nft|legacy) -t filter -A FORWARD -m comment --comment '
                          r'"flanneld forward" -j FLANNEL-FWD', out)) == 2, out
    assert out.count("rules (12, from: python -m reconciler show ...)") == 2, out
    assert "pod 1 -> outside host 198.18.0.254 (no route back to the pods): ok, masqueraded" in out
    # Each lease shows a subnet of the network and a MAC.
    assert len(re.findall(r"^\s+\d\s+198\.18\.0\.\d\s+100\.64\.\d+\.0/24\s+([0-9a-f]{2}:){5}[0-9a-f]{2}\s+100\.64\.",
                          out, re.M)) == 2, out
    assert_nothing_left(work_dir(out))


@pytest.mark.root
@pytest.mark.etcd
def test_the_dual_stack_demo_shows_both_ping_matrices(root_and_etcd, capsys):
    rc = main(["demo", "--nodes", "2", "--ipv6"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert out.count("-> exit 0: in sync") == 2, out
    matrix = r"from \\ to\s+pod 1\s+pod 2\n\s+pod 1\s+-\s+ok\n\s+pod 2\s+ok\s+-\n"
    assert re.search(r"IPv4 \(ping\):\n  " + matrix, out), out
    assert re.search(r"IPv6 \(ping -6\):\n  " + matrix, out), out
    assert "IPv4: 2/2 pod pairs reachable" in out and "IPv6: 2/2 pod pairs reachable" in out
    # Each node's lease: both subnets in the key, flanneld's dual-stack value.
    keys = re.findall(r"/coreos.com/network/subnets/(100\.64\.\d+\.0-24&fd00:100:64:[0-9a-f]+::-64) = "
                      r'\{"PublicIP":"198\.18\.0\.\d","PublicIPv6":"fd00:198:18::\d","BackendType":"vxlan",'
                      r'"BackendData":\{"VNI":1,"VtepMAC":"[0-9a-f:]{17}"\},'
                      r'"BackendV6Data":\{"VNI":1,"VtepMAC":"[0-9a-f:]{17}"\}\}', out)
    assert len(keys) == 2, out
    # Pods have an address of each family, and the plans name both subnets.
    assert len(re.findall(r"pod \d: netns \S+, 100\.64\.\d+\.2/24, fd00:100:64:[0-9a-f]+::2/64", out)) == 2, out
    assert out.count(", IPv6 subnet fd00:100:64:") == 2, out
    assert_nothing_left(work_dir(out))


def test_a_missing_prerequisite_is_one_clear_line_and_nothing_is_made(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(lab_cni, "CNI_PATH", str(tmp_path / "no-cni"))
    rc = demo.run_demo(2)
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"error: demo prerequisite: CNI plugin {tmp_path}/no-cni/bridge not found " \
           "(apt-get install containernetworking-plugins)\n" in err
    assert f"{tmp_path}/no-cni/host-local not found" in err
    assert out == ""   # it stopped before making anything
    assert our_namespaces() == []


@pytest.mark.root
@pytest.mark.etcd
def test_a_failure_half_way_cleans_up_everything(root_and_etcd, monkeypatch, tmp_path, capsys):
    """The CNI plugin fails on ADD (and on DEL): etcd, namespaces and agents exist by then."""
    plugins = tmp_path / "cni"
    plugins.mkdir()
    broken = plugins / "bridge"
    broken.write_text('#!/bin/sh\necho \'{"cniVersion":"0.3.1","code":999,"msg":"test plugin says no"}\'\nexit 1\n')
    broken.chmod(0o755)
    (plugins / "host-local").symlink_to(os.path.join(lab_cni.CNI_PATH, "host-local"))
    monkeypatch.setattr(lab_cni, "CNI_PATH", str(plugins))

    rc = demo.run_demo(2)
    out, err = capsys.readouterr()
    assert rc == 1
    assert "error: demo failed: CNI ADD demo-pod-1" in err and "test plugin says no" in err, err
    assert "[4/7] The agent on every node" in out and "done: nothing left behind" in out
    assert_nothing_left(work_dir(out))


@pytest.mark.parametrize("nodes", ["1", "21"])
def test_the_node_count_is_checked(nodes, capsys):
    assert main(["demo", "--nodes", nodes]) == 1
    assert f"--nodes must be between 2 and 20, not {nodes}" in capsys.readouterr().err
