"""Large plans in text are summed up (counts per kind, the first lines, every failure); --show-all
and JSON give every change."""
from __future__ import annotations

import json

from benchmarks.conftest import PREFIX, cluster_kvs
from reconciler.cli.main import main
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams
from reconciler.core.model import KernelState
from reconciler.core.plan import OpResult
from reconciler.core.reconcile import compute_cycle
from reconciler.core.render import SUMMARY_LINES, plan_text


def _plan(n):
    kvs = cluster_kvs(n)
    return compute_cycle(parse_network_config(kvs[0].value), kvs, PREFIX, NodeParams(public_ip="198.18.0.1"),
                         KernelState()).plan


def test_a_small_plan_is_printed_in_full():
    plan = _plan(20)
    text = plan_text(plan)
    assert len(plan) < SUMMARY_LINES and sum(line.startswith("  + ") for line in text.splitlines()) == len(plan)
    assert "summed up" not in text


def test_a_large_plan_shows_counts_first_lines_and_how_many_are_hidden():
    plan = _plan(300)                     # 4 + 3 x 299 changes
    lines = plan_text(plan).splitlines()
    assert "neigh: 299 (299 to create)" in lines and "route: 299 (299 to create)" in lines
    shown = sum(line.startswith("  + ") for line in lines)
    hidden = sum(int(line.split()[2]) for line in lines if line.startswith("  ... and "))
    assert shown + hidden == len(plan) and shown <= SUMMARY_LINES + 10
    assert lines[-2] == "Plan: 901 to create, 0 to update, 0 to delete."
    assert lines[-1].startswith("(901 changes summed up; --show-all")
    assert plan_text(plan, limit=None).count("\n  + ") == len(plan)


def test_every_failure_is_shown_even_when_summed_up():
    plan = _plan(300)
    results = [OpResult(c, ok=(i % 100 != 99), message=f"boom {i}") for i, c in enumerate(plan)]
    text = plan_text(plan, results)
    assert all(f"[FAILED: boom {i}]" in text for i in range(99, len(plan), 100))
    assert "; 9 failed." in text


def test_plan_show_all_and_json_are_complete(tmp_path, capsys):
    kvs = cluster_kvs(200)
    path = tmp_path / "leases.json"
    path.write_text(json.dumps({"prefix": PREFIX, "revision": 1, "kvs": [
        {"key": kv.key, "value": kv.value, "lease": kv.lease, "mod_revision": kv.mod_revision} for kv in kvs]}))
    base = ["plan", "--leases-file", str(path), "--public-ip", "198.18.0.1", "--offline"]
    assert main(base) == 2
    summed = capsys.readouterr().out
    assert main([*base, "--show-all"]) == 2
    full = capsys.readouterr().out
    assert main([*base, "--output", "json"]) == 2
    changes = json.loads(capsys.readouterr().out)["changes"]
    assert "summed up" in summed and "summed up" not in full
    assert full.count("\n  + ") == len(changes) > summed.count("\n  + ")
