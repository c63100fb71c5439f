"""The shipped systemd unit, in a booted systemd: installed as the README says, it converges a node.

A Debian bookworm tree (mmdebstrap, ``tests/debian_tree.py``) is booted with
``systemd-nspawn -b`` inside a node network namespace made by the test, with a private
etcd on that namespace's 127.0.0.1.  The package is installed the README's way (a wheelhouse
built here, a venv at /opt/flannel-reconciler), the unit from deploy/ with an
``/etc/default/flannel-reconciler`` of ``FLANNELD_*`` variables, and then:

* ``systemctl enable --now`` returns with the unit active and READY's status text, under the
  unit's whole sandbox (ProtectSystem=strict and the rest, docs/systemd.md): flannel.1, the
  route to the peer's lease, accept_ra=0 on flannel.1, subnet.env in /run/flannel, and the
  masquerading rules written with iptables-legacy, whose lock file (/run/xtables.lock) the
  container's fresh /run does not have until the unit makes it; every file the agent made
  under /run is one the unit makes writable;
* ``systemctl stop`` ends it on SIGTERM (Result=success, not a stop timeout), and the kernel
  objects stay;
* a second start rewrites nothing: its first cycle plans no change and no rule is written.

Skipped only when not root and ``CI`` is unset; in CI the tools are installed by
``.ci/install-deps test`` and a missing one fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest_etcd import require_etcd
from tests.conftest_netns import require_root
from tests.debian_tree import Booted, debian_tarball, extract, tools_missing
from tests.etcd_server import ETCDCTL_BIN, EtcdServer
from tests.netns import ip_json, run

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
UNIT = "flannel-reconciler"
PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
PEER_KEY = PREFIX + "/subnets/100.64.200.0-24"
PEER = ('{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:c8:00"}}')

# The README's procedure ("As a systemd service"), step by step: the build on this host, the
# rest on the node, from a directory holding wheels/ and deploy/.  test_the_readme_says_it
# keeps the README and these lines the same.
BUILD = "python3 -m pip wheel -w wheels ."
NODE = (
    "python3 -m venv /opt/flannel-reconciler",
    "/opt/flannel-reconciler/bin/pip install --no-index --find-links wheels flannel-reconciler",
    "ln -sf /opt/flannel-reconciler/bin/flannel-reconciler /usr/local/bin/flannel-reconciler",
    "install -m 644 deploy/flannel-reconciler.service /etc/systemd/system/",
)
START = ("systemctl daemon-reload", "systemctl enable --now flannel-reconciler")


def _runtime_packages() -> list[str]:
    out = subprocess.run(["bash", str(ROOT / ".ci" / "install-deps"), "--print", "runtime"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


# What the node needs: a booting systemd, Debian's python3 with venv, and the agent's tools.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates", *_runtime_packages())


def test_the_readme_says_it():
    readme = (ROOT / "README.md").read_text()
    for line in (BUILD, *NODE, *START):
        assert line in readme, line
    assert "Install (README" in (ROOT / "deploy" / f"{UNIT}.service").read_text()


def _require_tools() -> None:
    require_root()
    require_etcd()
    missing = tools_missing()
    if missing:
        reason = f"{', '.join(missing)} not installed (.ci/install-deps test installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: required in CI", pytrace=False)
        pytest.skip(reason)


def _show(box: Booted, *props: str) -> dict[str, str]:
    out = box.run("systemctl", "show", UNIT, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _journal(box: Booted, invocation: str, until: str, timeout: float = 60) -> str:
    """The agent's log in one start of the unit, once it holds ``until``.  journald reads the
    agent's stderr on its own, so a line the agent wrote before READY=1 (or before it exited)
    may reach the journal a moment after systemctl returned: wait for it, don't assume it."""
    deadline = time.monotonic() + timeout
    while True:
        log = box.run("journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
        if until in log or time.monotonic() > deadline:
            return log
        time.sleep(0.2)


def _run_tree(box: Booted) -> set[str]:
    """Everything under the container's /run but systemd's and journald's own files."""
    out = box.run("find", "/run", "-mindepth", "1", "(", "-path", "/run/systemd", "-o", "-path", "/run/log",
                  "-o", "-path", "/run/credentials", ")", "-prune", "-o", "-print").stdout
    return set(out.split())


def _writable() -> tuple[str, ...]:
    """What the unit makes writable under /run: its RuntimeDirectory= and ReadWritePaths= entries."""
    paths = []
    for line in (ROOT / "deploy" / f"{UNIT}.service").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "RuntimeDirectory":
            paths += [f"/run/{d}" for d in value.split()]
        elif key == "ReadWritePaths":
            paths += [p.lstrip("-") for p in value.split()]
    return tuple(p for p in paths if p.startswith("/run/"))


def _etcdctl(ns: str, endpoint: str, *argv: str) -> None:
    run(ns, ETCDCTL_BIN, "--endpoints", endpoint, *argv, env={"PATH": os.environ["PATH"], "ETCDCTL_API": "3"})


def test_the_unit_boots_converges_stops_and_restarts(tmp_path, underlay_factory):
    _require_tools()
    # The README's build step, into a staging directory that stands for what is copied to the node.
    stage = tmp_path / "stage"
    (stage / "deploy").mkdir(parents=True)
    subprocess.run([sys.executable, *BUILD.split()[1:-2], str(stage / "wheels"), "-q", str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    shutil.copy(ROOT / "deploy" / f"{UNIT}.service", stage / "deploy")

    tree = extract(debian_tarball(PACKAGES, tmp_path), tmp_path / "root")
    shutil.copytree(stage, tree / "srv" / "stage")

    node = underlay_factory(count=1).nodes[0]
    # What Docker leaves: a legacy FORWARD policy.  The agent then writes its rules with
    # iptables-legacy (docs/traffic-rules.md), which takes /run/xtables.lock.
    run(node.ns, "iptables-legacy", "-P", "FORWARD", "DROP")
    with EtcdServer(netns=node.ns) as etcd:
        _etcdctl(node.ns, etcd.endpoint, "put", PREFIX + "/config", CONFIG)
        _etcdctl(node.ns, etcd.endpoint, "put", PEER_KEY, PEER)
        with Booted(tree, netns=f"/run/netns/{node.ns}", capabilities=["CAP_NET_ADMIN"],
                    log=tmp_path / "nspawn.log") as box:
            assert box.run("test", "-e", "/run/xtables.lock", check=False).returncode != 0
            box.run("sh", "-ec", "cd /srv/stage && " + " && ".join(NODE))
            before = _run_tree(box)
            box.run("tee", "/etc/default/flannel-reconciler", input=(
                f"FLANNELD_ETCD_ENDPOINTS={etcd.endpoint}\n"
                f"FLANNELD_ETCD_PREFIX={PREFIX}\n"
                f"FLANNELD_IFACE={node.dev}\n"
                "FLANNELD_IP_MASQ=true\n"))
            for step in START:
                out = box.run(*step.split(), check=False)
                assert out.returncode == 0, f"{step}: {out.stderr}\n{box.run('journalctl', '-u', UNIT, '--no-pager', check=False).stdout[-4000:]}"

            # Type=notify: enable --now returned once READY=1 arrived.
            first = _show(box, "ActiveState", "StatusText", "InvocationID")
            log = _journal(box, first["InvocationID"], "ready: first full sync done")
            assert first["ActiveState"] == "active", log
            assert first["StatusText"].startswith("ready: subnet 100.64."), first
            subnet = re.match(r"ready: subnet 100\.64\.(\d+)\.0/24,", first["StatusText"]).group(1)
            env = box.run("cat", "/run/flannel/subnet.env").stdout
            assert "FLANNEL_NETWORK=100.64.0.0/16\n" in env and f"FLANNEL_SUBNET=100.64.{subnet}.1/24\n" in env, env
            assert ip_json(node.ns, "-d link show flannel.1")[0]["linkinfo"]["info_data"]["id"] == 1
            routes = ip_json(node.ns, "route show 100.64.200.0/24")
            assert routes and routes[0]["dev"] == "flannel.1" and routes[0]["gateway"] == "100.64.200.0", routes
            # ProtectKernelTunables with /proc/sys/net writable: the agent's sysctl went through.
            assert run(node.ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout.strip() == "0"
            rules = run(node.ns, "iptables-legacy-save", "-t", "nat").stdout
            assert "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG" in rules, log
            assert " ERROR " not in log, log
            # ProtectSystem=strict makes /run read-only but for what the unit lists.  Inside
            # systemd-nspawn, ProtectKernelTunables=, ProtectControlGroups= and ProtectProc= leave
            # the service's /run writable (docs/systemd.md), so a write the sandbox would refuse
            # on a host would pass here unseen: every file the agent made must be a listed one.
            made = _run_tree(box) - before
            stray = sorted(p for p in made if not any(p == w or p.startswith(w + "/") for w in _writable()))
            assert not stray and "/run/flannel/subnet.env" in made, (stray, sorted(made))

            # Stop: on SIGTERM, not the stop timeout's SIGKILL; the kernel state stays.
            box.run("systemctl", "stop", UNIT)
            stopped = _show(box, "ActiveState", "Result")
            assert stopped == {"ActiveState": "inactive", "Result": "success"}, stopped
            assert "stopping, kernel state left in place" in _journal(box, first["InvocationID"], "stopping")
            assert ip_json(node.ns, "route show 100.64.200.0/24")
            assert ip_json(node.ns, "link show flannel.1")

            # Start again: everything is in place, so nothing is written.
            box.run("systemctl", "start", UNIT)
            second = _show(box, "ActiveState", "StatusText", "InvocationID")
            assert second["ActiveState"] == "active" and second["InvocationID"] != first["InvocationID"]
            log = _journal(box, second["InvocationID"], "cycle trigger=")
            cycles = re.findall(r"cycle trigger=\S+ .*", log)
            assert cycles and "create=0 update=0 delete=0 failed=0" in cycles[0], log
            assert "rules: " not in log and " ERROR " not in log, log
            assert second["StatusText"].startswith(f"ready: subnet 100.64.{subnet}.0/24,"), second
