"""The command line, offline: golden text, the JSON schema, exit codes, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import EXAMPLE_SNAPSHOT, main

EXAMPLE = str(EXAMPLE_SNAPSHOT)

GOLDEN = """\
node 198.18.0.1, subnet 100.64.1.0/24
link:
  + link cni0 type bridge mtu 1450 up
  + link flannel.1 type vxlan id 1 local 198.18.0.1 dstport 8472 nolearning mtu 1450 address 0a:58:64:40:01:00 up
address:
  + address 100.64.1.1/24 dev cni0
  + address 100.64.1.0/32 dev flannel.1
neigh:
  + neigh 100.64.2.0 lladdr 0a:58:64:40:02:00 dev flannel.1 nud permanent
  + neigh 100.64.3.0 lladdr 0a:58:64:40:03:00 dev flannel.1 nud permanent
fdb:
  + fdb 0a:58:64:40:02:00 dev flannel.1 dst 198.18.0.2 self permanent
  + fdb 0a:58:64:40:03:00 dev flannel.1 dst 198.18.0.3 self permanent
route:
  + route 100.64.2.0/24 via 100.64.2.0 dev flannel.1 onlink
  + route 100.64.3.0/24 via 100.64.3.0 dev flannel.1 onlink
rule:
  + rule iptables -t filter chain FLANNEL-FWD
  + rule iptables -t filter -A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
  + rule iptables -t filter -A FLANNEL-FWD -d 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
  + rule iptables -t filter -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
Plan: 14 to create, 0 to update, 0 to delete.
"""


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_of_the_example_cluster_is_readable_and_exits_2(capsys):
    code, out, err = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--offline")
    assert (code, out, err) == (2, GOLDEN, "")


def test_plan_json_schema(capsys):
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.2", "--offline",
                       "--output", "json", "--underlay-mtu", "9000")
    doc = json.loads(out)
    assert code == 2
    assert set(doc) == {"in_sync", "node", "changes", "summary", "skipped", "conflicts"}
    assert doc["in_sync"] is False
    assert doc["node"] == {"public_ip": "198.18.0.2", "subnet": "100.64.2.0/24"}
    assert doc["summary"] == {"create": 14, "update": 0, "delete": 0}
    link = next(c["object"] for c in doc["changes"] if c["kind"] == "link" and c["object"]["type"] == "vxlan")
    assert link == {"name": "flannel.1", "type": "vxlan", "mtu": 8950, "mac": "0a:58:64:40:02:00", "up": True,
                    "vni": 1, "local": "198.18.0.2", "port": 8472, "learning": False}
    fields = {(c["kind"], frozenset(c["object"])) for c in doc["changes"]}
    assert fields == {
        ("link", frozenset({"name", "type", "mtu", "mac", "up"})),  # cni0: no vxlan fields
        ("link", frozenset({"name", "type", "mtu", "mac", "up", "vni", "local", "port", "learning"})),
        ("address", frozenset({"dev", "cidr"})), ("route", frozenset({"dst", "gateway", "dev", "onlink"})),
        ("neigh", frozenset({"dev", "ip", "mac"})), ("fdb", frozenset({"dev", "mac", "dst"})),
        ("rule", frozenset({"backend", "table", "chain"})), ("rule", frozenset({"backend", "table", "chain", "rule"})),
    }
    assert all(c["op"] == "create" and "live" not in c for c in doc["changes"])


def _live_file(tmp_path, capsys, public_ip="198.18.0.1") -> Path:
    """The example's desired state for a node, as a live-state file (a converged kernel)."""
    from reconciler.core.leases import parse_snapshot
    from reconciler.cli.main import config_from_snapshot
    from reconciler.core.desired import NodeParams
    from reconciler.core.reconcile import compute_cycle
    from reconciler.core.model import KernelState

    snap = parse_snapshot(Path(EXAMPLE).read_text())
    cycle = compute_cycle(config_from_snapshot(snap), snap.kvs, snap.prefix, NodeParams(public_ip=public_ip),
                          KernelState())
    path = tmp_path / "live.json"
    path.write_text(json.dumps(cycle.desired.to_json()))
    return path


def test_converged_live_file_plans_nothing_and_exits_0(tmp_path, capsys):
    live = _live_file(tmp_path, capsys)
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--live-file", str(live),
                       "--iptables-forward-rules=false")
    assert code == 0 and out.endswith("In sync: no changes.\n")
    # A live file has no rules: flanneld's default FORWARD accepts are planned against none present.
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--live-file", str(live))
    assert code == 2 and out.endswith("rule:\n" + GOLDEN.split("rule:\n")[1].replace("14 to create", "4 to create"))


def test_drifted_live_file_shows_desired_and_live(tmp_path, capsys):
    live = _live_file(tmp_path, capsys)
    data = json.loads(live.read_text())
    data["links"] = [dict(l, mtu=1500) if l["name"] == "flannel.1" else l for l in data["links"]]
    data["routes"].append({"dst": "100.64.9.0/24", "gateway": "100.64.9.0", "dev": "flannel.1", "onlink": True})
    live.write_text(json.dumps(data))
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--live-file", str(live),
                       "--iptables-forward-rules=false")
    assert code == 2
    assert "  ~ link flannel.1 type vxlan id 1 local 198.18.0.1 dstport 8472 nolearning mtu 1500 " in out
    assert ": mtu desired 1450, live 1500\n" in out
    assert "  - route 100.64.9.0/24 via 100.64.9.0 dev flannel.1 onlink\n" in out
    assert out.endswith("Plan: 0 to create, 1 to update, 1 to delete.\n")
    code, out, _ = run(capsys, "show", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--live-file", str(live),
                       "--iptables-forward-rules=false")
    assert code == 2
    assert "[drift]    link flannel.1" in out and "(mtu desired 1450, live 1500)" in out
    assert "[stale]    route 100.64.9.0/24 via 100.64.9.0 dev flannel.1 onlink" in out
    assert out.splitlines()[-1] == "10 ok, 0 missing, 1 drift, 1 stale, 0 conflict"


def test_skipped_lease_is_a_warning_on_stderr_naming_the_key(tmp_path, capsys):
    snap = json.loads(Path(EXAMPLE).read_text())
    snap["kvs"].append({"key": "/coreos.com/network/subnets/100.64.9.0-24", "value": "{broken", "lease": 1})
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(snap))
    code, out, err = run(capsys, "plan", "--leases-file", str(f), "--public-ip", "198.18.0.1", "--offline")
    assert code == 2 and out == GOLDEN
    assert err.startswith("warning: skipped lease /coreos.com/network/subnets/100.64.9.0-24: ")
    code, out, _ = run(capsys, "plan", "--leases-file", str(f), "--public-ip", "198.18.0.1", "--offline",
                       "--output", "json")
    assert json.loads(out)["skipped"][0]["key"] == "/coreos.com/network/subnets/100.64.9.0-24"


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.update(kvs=[kv for kv in s["kvs"] if not kv["key"].endswith("/config")]),
     "network config: /coreos.com/network/config: not found"),
    (lambda s: s["kvs"][0].update(value='{"Network":"100.64.0.0/16","Backend":{"Type":"host-gw"}}'),
     "Backend.Type"),
    (lambda s: s["kvs"][0].update(value='{"Network":"100.64.0.0/16","SubnetLen":40,"Backend":{"Type":"vxlan"}}'),
     "SubnetLen"),
    (lambda s: s.pop("kvs"), "--leases-file"),
])
def test_bad_input_exits_1_with_a_message_naming_it(tmp_path, capsys, mutate, message):
    snap = json.loads(Path(EXAMPLE).read_text())
    mutate(snap)
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(snap))
    code, out, err = run(capsys, "plan", "--leases-file", str(f), "--public-ip", "198.18.0.1", "--offline")
    assert code == 1 and out == ""
    assert message in err


def test_unknown_node_and_unreadable_files_exit_1(tmp_path, capsys):
    code, _, err = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.77", "--offline")
    assert code == 1 and "198.18.0.77" in err
    code, _, err = run(capsys, "plan", "--leases-file", str(tmp_path / "nope.json"), "--public-ip", "1.2.3.4")
    assert code == 1 and err.startswith("error: --leases-file ") and err.endswith(": no such file\n")
    bad = tmp_path / "live.json"
    bad.write_text('{"routes": [{"dst": "100.64.9.0/24"}]}')
    code, _, err = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--live-file", str(bad))
    assert code == 1 and "routes[0]" in err


def test_offline_plan_needs_a_public_ip(capsys):
    code, _, err = run(capsys, "plan", "--leases-file", EXAMPLE, "--offline")
    assert code == 1 and "--public-ip" in err


def test_environment_variables_like_flanneld(monkeypatch, capsys):
    monkeypatch.setenv("FLANNELD_PUBLIC_IP", "198.18.0.3")
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--offline")
    assert code == 2 and out.startswith("node 198.18.0.3, subnet 100.64.3.0/24\n")


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--leases-file", EXAMPLE,
                           "--public-ip", "198.18.0.1", "--offline"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == GOLDEN


def test_rule_flags_like_flanneld(capsys):
    """--ip-masq adds FLANNEL-POSTRTG; Go-style booleans; a bad value is one error line, exit 1."""
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--offline",
                       "--ip-masq", "--ip-masq-fully-random-disable", "--output", "json")
    rules = [c["object"] for c in json.loads(out)["changes"] if c["kind"] == "rule"]
    assert {"backend": "iptables", "table": "nat", "chain": "FLANNEL-POSTRTG",
            "rule": '-s 100.64.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE'} in rules
    assert len(rules) == 12
    code, out, _ = run(capsys, "plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--offline",
                       "--iptables-forward-rules=false")
    assert "rule:" not in out
    assert main(["plan", "--leases-file", EXAMPLE, "--offline", "--iptables-forward-rules=maybe"]) == 1
    assert "--iptables-forward-rules 'maybe': not a boolean" in capsys.readouterr().err


# ------------------------------------------------------------------ --version

def _version_of(env: dict) -> str:
    """``python3 -m reconciler --version`` in a subprocess with ``env`` added (stdout; exit 0, no stderr)."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items()
            if k not in ("FLANNEL_RECONCILER_NO_CYTHON", "FLANNELD_NETLINK_BACKEND")}
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--version"], env={**base, **env}, capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return proc.stdout


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_the_project_version():
    import reconciler

    assert reconciler.__version__ == _pyproject_version() == "0.2.0"


def test_version_flag_works_without_a_subcommand(capsys, monkeypatch):
    import _fastpath

    monkeypatch.delenv("FLANNELD_NETLINK_BACKEND", raising=False)
    code = main(["--version"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    path = "Cython fast path" if _fastpath.AVAILABLE else "pure Python"
    assert out == f"flannel-reconciler 0.2.0 (netlink: batched, {path})\n"


def test_version_says_pure_python_when_the_fast_path_is_off():
    want = "flannel-reconciler 0.2.0 (netlink: batched, pure Python)\n"
    assert _version_of({"FLANNEL_RECONCILER_NO_CYTHON": "1"}) == want


def test_version_says_cython_when_the_fast_path_is_built():
    from tests.conftest_fastpath import require_fastpath

    require_fastpath()
    assert _version_of({}) == "flannel-reconciler 0.2.0 (netlink: batched, Cython fast path)\n"
    assert _version_of({"FLANNELD_NETLINK_BACKEND": "pyroute2"}) == "flannel-reconciler 0.2.0 (netlink: pyroute2)\n"


def test_netlink_backend_defaults_to_batched():
    from reconciler.cli.main import parse_args

    argv = ["plan", "--leases-file", EXAMPLE, "--offline", "--public-ip", "198.18.0.1"]
    assert parse_args(argv, environ={}).netlink_backend == "batched"
    assert parse_args(argv + ["--netlink-backend", "pyroute2"], environ={}).netlink_backend == "pyroute2"
    assert parse_args(argv, environ={"FLANNELD_NETLINK_BACKEND": "pyroute2"}).netlink_backend == "pyroute2"


def test_one_shot_commands_run_without_the_cyclic_collector_and_give_it_back(monkeypatch, tmp_path):
    # plan/apply/show build the whole state once and exit: collections only cost them time
    # (docs/memory.md).  In-process callers get the collector back; the agent keeps it.
    import gc

    from reconciler.cli import main as cli_main

    seen = {}

    def handler(name):
        def run(args):
            seen[name] = gc.isenabled()
            return 0
        return run

    for name in ("plan", "show"):
        monkeypatch.setitem(cli_main.COMMANDS, name, handler(name))
    leases = tmp_path / "leases.json"
    leases.write_text("{}")
    assert cli_main.main(["plan", "--leases-file", str(leases), "--offline"]) == 0
    assert cli_main.main(["show", "--leases-file", str(leases)]) == 0
    assert seen == {"plan": False, "show": False} and gc.isenabled()
    assert "run" not in cli_main._ONE_SHOT and "demo" not in cli_main._ONE_SHOT
