"""``python -m reconciler bench``: the pure parts exactly, and the whole command as a CI smoke test.

The smoke test runs ``--nodes 1000 --quick`` (every scenario, fewer changes,
short idle window) and checks that the figures exist and are sane -- counts
right, no writes on a storm of unchanged re-puts, the PNGs written, nothing
left behind -- and never a wall-clock bound.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.tools.bench import parse_nodes
from reconciler.tools.bench.cluster import ADD_OFFSET, NETWORK, NODE_IP, layout, mac_for
from reconciler.tools.bench.monitor import decode
from reconciler.tools.bench.probe import Counters, parse_metrics
from reconciler.tools.bench.report import Figure, percentile, read_json, render_markdown, render_table, write_json
from reconciler.tools.bench.scenarios import bound_of, churn_plan, resync_durations
from reconciler.core.leases import parse_lease

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# The simulated cluster
# --------------------------------------------------------------------------------------------

def test_layout_is_a_valid_flannel_cluster():
    c = layout(1000)
    assert c.subnet_len == 24 and len(c.remotes) == 999
    subnets = {r.subnet for r in c.remotes}
    assert len(subnets) == 999 and all(s.subnet_of(NETWORK) and s.prefixlen == 24 for s in subnets)
    assert ipaddress.IPv4Network("100.64.0.0/24") not in subnets   # flannel never hands out the first
    ips = {r.public_ip for r in c.remotes}
    assert len(ips) == 999 and NODE_IP not in ips
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("198.18.0.0/15") for ip in ips)
    assert len({r.vtep_mac for r in c.remotes}) == 999
    cfg = json.loads(c.config)
    assert cfg == {"Network": "100.64.0.0/10", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}


def test_lease_values_are_flanneld_bytes():
    r = layout(10).remotes[4]
    assert r.value() == ('{"PublicIP":"198.18.1.5","PublicIPv6":null,"BackendType":"vxlan",'
                         '"BackendData":{"VNI":1,"VtepMAC":"0a:58:00:00:00:05"}}')
    lease = parse_lease(r.key, r.value(), 7)
    assert (lease.subnet, lease.public_ip, lease.vtep_mac) == (r.subnet, r.public_ip, r.vtep_mac)


def test_twenty_thousand_nodes_need_a_longer_subnet_len():
    c = layout(20_000)
    assert c.subnet_len == 26
    assert len({r.subnet for r in c.remotes}) == 19_999
    assert all(r.subnet.subnet_of(NETWORK) for r in c.remotes)
    assert "SubnetLen 26" in c.describe()


@pytest.mark.parametrize("n", [1000, 20_000])
def test_the_agent_would_take_every_lease(n):
    """The config and the leases pass the agent's own validation: nothing skipped, no conflict."""
    from reconciler.core.config import parse_network_config
    from reconciler.core.leases import RawKV, validate_leases

    c = layout(n)
    kvs = [RawKV(f"/p/subnets/{r.key}", r.value(), lease=i + 1, mod_revision=i + 1) for i, r in enumerate(c.remotes)]
    leases, skipped = validate_leases(parse_network_config(c.config), kvs, "/p")
    assert len(leases) == n - 1 and skipped == []


def test_report_rejects_a_file_that_is_not_results(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "reconciler.tools.bench.report", str(bad)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {bad}: not a bench results file")
    assert "Traceback" not in proc.stderr


def test_report_joins_several_files_side_by_side(tmp_path):
    """Two runs of different sizes become one summary table; a size in both comes from the later file."""
    machine = {"date": "2026-12-03T00:00:00Z", "cpus": 2, "kernel": "6.x"}
    args = {"backend": "batched"}

    def run(n, p50, rss):
        return {"figures": [Figure("lease churn", "change latency p50", p50, "ms", "flanneld re-enactment", 4.0,
                                   target="<= 1.2x baseline"),
                            Figure("memory", "RSS after convergence", rss, "MiB", target="<= 60"),
                            Figure("rolling restart", f"{n - 1:,} unchanged re-puts: netlink writes", 0, "")]}

    write_json(tmp_path / "a.json", machine, args, {1000: run(1000, 4.4, 50.0), 5000: run(5000, 9.9, 99.0)})
    write_json(tmp_path / "b.json", machine, args, {5000: run(5000, 4.6, 58.0), 20_000: run(20_000, 5.2, 108.0)})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "reconciler.tools.bench.report", str(tmp_path / "a.json"),
                           str(tmp_path / "b.json"), "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[0].startswith("| scenario | figure | 1,000 nodes | 5,000 nodes | 20,000 nodes |")
    p50 = next(line for line in summary if "change latency p50" in line)
    assert "4.6 ms (1.15x); <= 1.2x baseline: met" in p50      # the later file's 5,000-node run
    assert "9.9 ms" not in p50
    assert "5.2 ms (1.30x); <= 1.2x baseline: **missed**" in p50
    rss = next(line for line in summary if "RSS after convergence" in line)
    assert "108.00 MiB; <= 60: **missed**" in rss
    assert {p.name for p in out.glob("table-*.md")} == {"table-1000.md", "table-5000.md", "table-20000.md"}
    reputs = [line for line in summary if "unchanged re-puts" in line]     # one row, the count left out
    assert len(reputs) == 1 and reputs[0].startswith("| rolling restart | unchanged re-puts: netlink writes | 0 | 0 | 0 |")


def test_churn_plan_cycles_kinds_and_never_touches_a_removed_node():
    c = layout(1000)
    plan = churn_plan(c, 60)
    assert [k for k, _, _ in plan[:6]] == ["add", "mac", "delete"] * 2
    assert sum(1 for k, _, _ in plan if k == "add") == 20
    removed = set()
    remote_subnets = {r.subnet for r in c.remotes}
    for kind, r, mac in plan:
        assert r.key not in removed
        if kind == "add":
            assert r.subnet not in remote_subnets and r.index >= c.nodes + ADD_OFFSET
        elif kind == "mac":
            assert mac != r.vtep_mac
        else:
            removed.add(r.key)
    assert churn_plan(c, 60) == plan    # the same plan every run


def test_churn_plan_refuses_a_cluster_too_small():
    with pytest.raises(ValueError):
        churn_plan(layout(20), 60)


def test_macs_are_unicast_locally_administered_and_distinct():
    macs = {mac_for(i, v) for i in (1, 255, 256, 70000) for v in (0, 1, 2)}
    assert len(macs) == 12
    assert all(int(m.split(":")[0], 16) & 0x03 == 0x02 for m in macs)


# --------------------------------------------------------------------------------------------
# Monitor decoding, agent probes, reporting
# --------------------------------------------------------------------------------------------

def _attr(kind, payload):
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(kind, body):
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_decode_turns_notifications_into_signals():
    neigh = _msg(28, struct.pack("=BxxxiHBB", 2, 5, 0x80, 0, 1)
                 + _attr(1, bytes([100, 64, 5, 0])) + _attr(2, bytes.fromhex("0a5800000005")))
    fdb_del = _msg(29, struct.pack("=BxxxiHBB", 7, 5, 0x80, 2, 0) + _attr(2, bytes.fromhex("0a5800000005")))
    route = _msg(24, struct.pack("=BBBBBBBBI", 2, 24, 0, 0, 254, 73, 0, 1, 4) + _attr(1, bytes([100, 64, 5, 0])))
    local = _msg(24, struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 255, 2, 254, 2, 0) + _attr(1, bytes([100, 64, 0, 0])))
    link = _msg(16, struct.pack("=BxHiII", 0, 1, 5, 0, 0) + _attr(3, b"flannel.1\0") + _attr(4, struct.pack("=I", 1400)))
    assert decode(neigh + fdb_del + route + local + link) == [
        ("neigh", "new", "100.64.5.0", "0a:58:00:00:00:05"),
        ("fdb", "del", "0a:58:00:00:00:05"),
        ("route", "new", "100.64.5.0/24"),
        ("link", "new", "flannel.1", 1400),
    ]


METRICS = """\
# HELP flannel_reconciler_operations_total Kernel operations by kind, op and result.
# TYPE flannel_reconciler_operations_total counter
flannel_reconciler_operations_total{kind="neigh",op="create",result="ok"} 10
flannel_reconciler_operations_total{kind="route",op="create",result="ok"} 10
flannel_reconciler_operations_total{kind="fdb",op="delete",result="error"} 1
flannel_reconciler_cycles_total{outcome="ok",trigger="lease"} 4
flannel_reconciler_cycles_total{outcome="ok",trigger="resync"} 2
flannel_reconciler_leases 20
"""


def test_counters_from_metrics_and_their_difference():
    c = Counters.from_text(METRICS)
    assert (c.writes, c.cycles, c.dumps) == (21, 6, None)
    assert c.writes_by == {("neigh", "create"): 10, ("route", "create"): 10, ("fdb", "delete"): 1}
    later = Counters.from_text(METRICS.replace("} 10\nflannel_reconciler_operations_total{kind=\"route\"", "} 12\n"
                                               "flannel_reconciler_operations_total{kind=\"route\"")
                               + "flannel_reconciler_dumps_total 3\n")
    d = later - c
    assert d.writes == 2 and d.writes_by == {("neigh", "create"): 2} and d.dumps is None
    assert c.resyncs == 2 and d.resyncs == 0 and d.dumps_not_resync is None


def test_a_dump_during_a_change_is_the_changes_only_when_no_resync_ran():
    """The periodic resync dumps by design; a change's window that a resync fell into is not
    charged with that dump, but any dump beyond it is."""
    before = Counters.from_text(METRICS + "flannel_reconciler_dumps_total 3\n")
    resync = Counters.from_text(METRICS.replace('trigger="resync"} 2', 'trigger="resync"} 3')
                                + "flannel_reconciler_dumps_total 4\n")
    assert (resync - before).dumps == 1 and (resync - before).dumps_not_resync == 0
    extra = Counters.from_text(METRICS + "flannel_reconciler_dumps_total 4\n")
    assert (extra - before).dumps_not_resync == 1
    assert parse_metrics('x{a="b\\"c"} 1.5')["x"] == [({"a": 'b"c'}, 1.5)]     # unescaped, as Prometheus reads it


def test_resync_durations_only_counts_no_op_resyncs():
    log = "\n".join([
        "t INFO cycle trigger=resync leases=5 skipped=0 create=0 update=0 delete=0 failed=0 etcd=up duration=0.040s",
        "t INFO cycle trigger=lease leases=5 skipped=0 create=0 update=0 delete=0 failed=0 etcd=up duration=0.010s",
        "t INFO cycle trigger=resync leases=5 skipped=0 create=1 update=0 delete=0 failed=0 etcd=up duration=0.300s",
        "t INFO cycle trigger=resync leases=5 skipped=0 create=0 update=0 delete=0 failed=0 etcd=up duration=0.050s",
    ])
    assert resync_durations(log) == [0.04, 0.05]


def test_percentile_interpolates_between_ranks():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 90) == pytest.approx(90.1)
    assert percentile([5, 1, 3], 100) == 5


def test_figure_targets_and_ratios():
    f = Figure("churn", "p50", 20.0, "ms", baseline="flanneld", baseline_value=5.0, target="<= 25")
    assert f.ratio == 4.0 and f.met is True
    assert Figure("x", "y", 2.0, "s", baseline_value=1.0, target="<= 1.5x baseline").met is False
    assert Figure("x", "y", 0, "", target="== 0").met is True
    assert Figure("x", "y", None, "", target="== 0").met is None      # n/a is not a pass
    assert Figure("x", "y", 0.31, "s CPU", target="< 0.3").met is False
    table = render_table(5000, [f, Figure("x", "dumps", None, "", target="== 0")])
    assert "5,000 nodes" in table and "20.0 ms" in table and "4.00x" in table and "n/a" in table
    assert "| churn | p50 | 20.0 ms | flanneld: 5.0 ms | 4.00x | <= 25 met |" in render_markdown(5000, [f])


def test_results_file_round_trip(tmp_path):
    figs = [Figure("churn", "p50", 20.0, "ms", baseline="flanneld", baseline_value=5.0, target="<= 25"),
            Figure("no-op", "dumps", None, "", target="== 0", note="n/a")]
    write_json(tmp_path / "r.json", {"cpus": 2}, {"backend": "batched"}, {5000: {"nodes": 5000, "figures": figs}})
    doc, runs = read_json(tmp_path / "r.json")
    assert runs == {5000: figs}
    assert doc["runs"]["5000"]["figures"][0]["ratio"] == 4.0 and doc["runs"]["5000"]["figures"][0]["met"] is True


def test_bound_is_judged_against_the_kernel_floor_of_the_same_run():
    assert bound_of(1.4, 1.0, "agent") == "kernel"
    assert bound_of(1.6, 1.0, "agent") == "agent"
    assert bound_of(9.0, 1.0, "client") == "client"
    assert bound_of(None, 1.0, "agent") == "agent" and bound_of(1.0, None, "agent") == "agent"


def test_parse_nodes():
    assert parse_nodes("5000,1000, 1000") == [1000, 5000]
    for bad in ("", "abc", "10", "99999999"):
        with pytest.raises(ValueError):
            parse_nodes(bad)


def test_bad_nodes_is_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "reconciler", "bench", "--nodes", "many"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --nodes: 'many' is not a number"


# --------------------------------------------------------------------------------------------
# The command, for real (root, etcd)
# --------------------------------------------------------------------------------------------

def _needs_root_and_etcd():
    from tests.conftest_etcd import require_etcd
    from tests.conftest_netns import require_root

    require_root()
    require_etcd()


def _bench_processes() -> dict[str, str]:
    """pid -> command line of every process that names a benchmark namespace or work directory."""
    found = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "frb-" in cmd or "flannel-bench-" in cmd:
            found[p] = cmd
    return found


def _leftovers(pid: int, before: dict[str, str]) -> list[str]:
    """What a bench run (process ``pid``) left: its namespaces, and processes that were not there before."""
    mine = f"frb-{pid}-"
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = [f"netns {line.split()[0]}" for line in out.splitlines() if line.startswith(mine)]
    left += [f"process {p}: {cmd[:160]}" for p, cmd in _bench_processes().items() if p not in before]
    return left


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.slow
def test_quick_bench_at_1000_nodes(tmp_path):
    _needs_root_and_etcd()
    before, procs_before = set(Path("/tmp").glob("flannel-bench-*")), _bench_processes()
    # The batched backend keeps the run short on a loaded 2-core CI machine; the command is the same.
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "bench", "--nodes", "1000", "--quick",
                             "--backend", "batched", "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_env())
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert "lease churn: 30/30" in err and "1,000 nodes" in out

    [result] = tmp_path.glob("bench-*.json")
    doc = json.loads(result.read_text())
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["commit"]
    run = doc["runs"]["1000"]
    figs = {f["name"]: f for f in run["figures"]}

    # Counts right: every churn change reached both kernels, of each kind a third.
    samples = run["churn_samples"]
    assert len(samples) == 30 and run["churn_timeouts"] == {"agent": 0, "flanneld": 0}
    assert sorted(s["kind"] for s in samples) == ["add"] * 10 + ["delete"] * 10 + ["mac"] * 10
    for kind in ("add", "VtepMAC change", "delete"):
        assert figs[f"netlink writes per {kind} (max)"]["value"] >= 2     # at least neighbour and FDB
    assert figs["change latency p50"]["value"] > 0 and figs["change latency p50"]["baseline_value"] > 0
    assert figs["change latency p50"]["value"] <= figs["change latency p90"]["value"] <= \
        figs["change latency p99"]["value"] <= figs["change latency max"]["value"]
    # A storm of unchanged re-puts writes nothing; nor does one unchanged re-put.
    storm = next(f for f in run["figures"] if f["name"].endswith("unchanged re-puts: netlink writes"))
    assert storm["value"] == 0 and storm["baseline_value"] == 3 * run["storm"]["re_puts"]
    assert run["storm"]["re_puts"] == 999 + 10 - 10      # the remotes, plus adds, minus deletions
    assert figs["unchanged re-put: netlink writes"]["value"] == 0
    # Every other scenario produced its figure.
    for name in ("agent start -> all routes", "apply, whole process", "pyroute2 install",
                 "no-op full resync cycle", "idle CPU over 5 s", "RSS after convergence", "RSS after changes",
                 "route deleted: time to repair", "device MTU changed: time to repair"):
        assert figs[name]["value"] is not None and figs[name]["value"] >= 0, name
    assert figs["agent start -> all routes"]["baseline_value"] > 0
    assert run["flanneld_reenactment"]["install_writes"] == 3 * 1000   # the remotes and the agent
    # The plots.
    for png in ("latency.png", "cold_start.png", "rss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing left behind.
    assert _leftovers(proc.pid, procs_before) == []
    assert set(Path("/tmp").glob("flannel-bench-*")) <= before


@pytest.mark.slow
def test_ctrl_c_leaves_nothing_behind(tmp_path):
    _needs_root_and_etcd()
    before, procs_before = set(Path("/tmp").glob("flannel-bench-*")), _bench_processes()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "bench", "--nodes", "200", "--quick",
                             "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_env())
    seen = []
    try:
        for line in proc.stderr:      # interrupt once the agent and the flanneld re-enactment both run
            seen.append(line)
            if "flanneld re-enactment: started" in line:
                break
        assert _leftovers(proc.pid, procs_before), "nothing was running when interrupted: the test proves nothing"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + err
    assert "interrupted" in err and "Traceback" not in err
    assert _leftovers(proc.pid, procs_before) == []
    assert set(Path("/tmp").glob("flannel-bench-*")) <= before


def test_targets_are_per_size_where_the_issue_says_so():
    from reconciler.tools.bench.scenarios import target_for

    assert target_for("change latency p50", 5000) == target_for("change latency p90", 20000) == "<= 1.2x baseline"
    assert target_for("change latency p50", 1000) is None
    assert target_for("apply, whole process", 1000) == "<= 2.5x baseline"
    assert target_for("apply, whole process", 5000) == "<= 1.2x baseline"
    assert (target_for("RSS after convergence", 5000), target_for("RSS after convergence", 20000)) == ("<= 60", "<= 110")
    assert target_for("4,999 unchanged re-puts: netlink writes", 5000) == "== 0"
    assert target_for("999 unchanged re-puts: netlink writes", 1000) == "== 0"
    assert target_for("agent CPU", 5000) == "<= 0.5" and target_for("agent CPU", 20000) is None
    assert target_for("RSS after changes", 20000) == "<= 1.1x baseline"
    assert target_for("kernel dumps per change (max)", 1000) == "== 0"
    assert target_for("change latency p99", 5000) is None


def test_the_bench_times_the_package_as_installed_with_its_bytecode():
    """pip compiles an installed wheel's modules; the bench writes the same bytecode first, so
    a checkout run with PYTHONDONTWRITEBYTECODE does not time compiling every module."""
    import importlib.util

    import reconciler.agent.daemon as daemon
    from reconciler.tools.bench import compile_bytecode

    pyc = Path(importlib.util.cache_from_source(daemon.__file__))
    pyc.unlink(missing_ok=True)
    assert compile_bytecode() is True
    assert pyc.exists() and pyc.stat().st_mtime >= Path(daemon.__file__).stat().st_mtime
