"""``audit``: a clean generated cluster has nothing to look at; every planted problem is found,
with the keys involved; the command's text, JSON and exit codes."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.audit import audit_cluster, skip_code
from reconciler.core.config import parse_network_config
from reconciler.core.leases import RawKV, validate_leases
from tests.strategies import PREFIX, lease_value

BASE = f"{PREFIX}/subnets/"
CONFIG = {"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}


@st.composite
def clean_clusters(draw):
    n = draw(st.integers(1, 30))
    subnets = draw(st.lists(st.integers(1, 254), min_size=n, max_size=n, unique=True))
    hosts = draw(st.lists(st.integers(1, 250), min_size=n, max_size=n, unique=True))
    kvs = []
    for i, (s, h) in enumerate(zip(subnets, hosts)):
        lease = draw(st.sampled_from([0, 100 + i]))
        kvs.append(RawKV(f"{BASE}100.64.{s}.0-24", lease_value(f"198.18.0.{h}", f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", 1),
                         lease=lease, mod_revision=i + 1))
    ttls = {kv.lease: draw(st.integers(3600, 86400)) for kv in kvs if kv.lease}
    return kvs, ttls


@settings(max_examples=200, deadline=None)
@given(clean_clusters())
def test_a_clean_cluster_has_nothing_to_look_at(case):
    kvs, ttls = case
    result = audit_cluster(parse_network_config(json.dumps(CONFIG)), kvs, PREFIX, 7, ttls)
    assert result.clean, [f.message for f in result.findings]
    assert {f.code for f in result.findings} <= {"reservation"}
    assert result.counts["ok"] + result.counts["reservations"] == len(kvs)
    assert result.pool.used == len(kvs) and result.pool.total == 255


# Each planted problem: the kvs to add to a clean cluster, and the (code, keys) the audit must find.
_CLEAN_KEY = f"{BASE}100.64.1.0-24"
_CLEAN = RawKV(_CLEAN_KEY, lease_value("198.18.0.1", "02:00:00:00:00:01", 1), lease=5, mod_revision=1)
PLANTS = {
    "unparseable": ([RawKV(f"{BASE}100.64.9.0-24", "garbage{", lease=5, mod_revision=9)],
                    {("unparseable", (f"{BASE}100.64.9.0-24",))}),
    "outside-network": ([RawKV(f"{BASE}100.99.9.0-24", lease_value("198.18.0.9", "02:00:00:00:00:09", 1), 5, 9)],
                        {("outside-network", (f"{BASE}100.99.9.0-24",))}),
    "wrong-subnet-len": ([RawKV(f"{BASE}100.64.9.0-25", lease_value("198.18.0.9", "02:00:00:00:00:09", 1), 5, 9)],
                         {("wrong-subnet-len", (f"{BASE}100.64.9.0-25",))}),
    "backend-mismatch": ([RawKV(f"{BASE}100.64.9.0-24", lease_value("198.18.0.9", "02:00:00:00:00:09", 1, "udp"), 5, 9)],
                         {("backend-mismatch", (f"{BASE}100.64.9.0-24",))}),
    "vni-mismatch": ([RawKV(f"{BASE}100.64.9.0-24", lease_value("198.18.0.9", "02:00:00:00:00:09", 2), 5, 9)],
                     {("vni-mismatch", (f"{BASE}100.64.9.0-24",))}),
    "duplicate-vtep-mac": ([RawKV(f"{BASE}100.64.9.0-24", lease_value("198.18.0.9", "02:00:00:00:00:01", 1), 5, 9)],
                           {("duplicate-vtep-mac", (_CLEAN_KEY, f"{BASE}100.64.9.0-24"))}),
    "duplicate-public-ip": ([RawKV(f"{BASE}100.64.9.0-24", lease_value("198.18.0.1", "02:00:00:00:00:09", 1), 5, 9)],
                            {("duplicate-public-ip", (_CLEAN_KEY, f"{BASE}100.64.9.0-24"))}),
    "overlap": ([RawKV(f"{BASE}100.64.1.128-25", lease_value("198.18.0.9", "02:00:00:00:00:09", 1), 5, 9)],
                {("wrong-subnet-len", (f"{BASE}100.64.1.128-25",)),
                 ("overlapping-subnets", (_CLEAN_KEY, f"{BASE}100.64.1.128-25"))}),
    "capture": ([RawKV(f"{BASE}100.64.9.0-24", lease_value("100.64.1.7", "02:00:00:00:00:09", 1), 5, 9)],
                {("subnet-captures-public-ip", (_CLEAN_KEY, f"{BASE}100.64.9.0-24")),
                 ("public-ip-in-network", (f"{BASE}100.64.9.0-24",))}),
    "expiring": ([RawKV(f"{BASE}100.64.9.0-24", lease_value("198.18.0.9", "02:00:00:00:00:09", 1), 66, 9)],
                 {("expiring", (f"{BASE}100.64.9.0-24",))}),
}


@settings(max_examples=100, deadline=None)
@given(clean_clusters(), st.sampled_from(sorted(PLANTS)))
def test_every_planted_problem_is_found_with_its_keys(case, plant):
    kvs, ttls = case
    kvs = [kv for kv in kvs if kv.key != _CLEAN_KEY and "198.18.0.1\"" not in kv.value
           and "02:00:00:00:00:01" not in kv.value and "198.18.0.9\"" not in kv.value
           and "02:00:00:00:00:09" not in kv.value and kv.key != f"{BASE}100.64.9.0-24"]
    extra, want = PLANTS[plant]
    ttls = {**ttls, 5: 86000, 66: 60}
    kvs = kvs + [_CLEAN] + [RawKV(kv.key, kv.value, kv.lease, 1000 + kv.mod_revision) for kv in extra]
    result = audit_cluster(parse_network_config(json.dumps(CONFIG)), kvs, PREFIX, 7, ttls)
    found = {(f.code, f.keys) for f in result.findings if f.severity != "info"}
    assert found == want
    assert not result.clean


def test_pool_nearly_full_and_exhausted():
    """A /20 of /24s: SubnetMin 100.64.1.0 .. SubnetMax 100.64.15.0, 15 subnets to hand out."""
    cfg = parse_network_config(json.dumps({"Network": "100.64.0.0/20", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}))
    kvs = [RawKV(f"{BASE}100.64.{i}.0-24", lease_value(f"198.18.0.{i}", f"02:00:00:00:00:{i:02x}", 1), 5, i)
           for i in range(1, 16)]
    roomy = audit_cluster(cfg, kvs[:10], PREFIX)
    assert roomy.clean and (roomy.pool.total, roomy.pool.used, roomy.pool.free) == (15, 10, 5)
    nearly = audit_cluster(cfg, kvs[:14], PREFIX)
    assert [(f.severity, f.code) for f in nearly.findings] == [("warning", "pool-nearly-full")]
    full = audit_cluster(cfg, kvs, PREFIX)
    assert [(f.severity, f.code) for f in full.findings] == [("error", "pool-exhausted")]
    assert full.pool.free == 0 and not full.clean


def test_every_skip_reason_validate_leases_gives_has_a_code():
    """A new skip reason in the core must get an audit code, or this fails."""
    cfg = parse_network_config(json.dumps(CONFIG))
    kvs = [_CLEAN] + [kv for extra, _ in PLANTS.values() for kv in extra]
    _, skipped = validate_leases(cfg, [RawKV(kv.key, kv.value, kv.lease, i) for i, kv in enumerate(kvs)], PREFIX)
    parsed_reasons = [s.reason for s in skipped if "not valid JSON" not in s.reason]
    assert parsed_reasons and all(skip_code(r) != "skipped" for r in parsed_reasons), parsed_reasons


# --------------------------------------------------------------------------------------------
# The command

def _snapshot_file(tmp_path, kvs, config=CONFIG) -> str:
    rows = [{"key": f"{PREFIX}/config", "value": json.dumps(config)}] + [
        {"key": kv.key, "value": kv.value, "lease": kv.lease, "mod_revision": kv.mod_revision} for kv in kvs]
    path = tmp_path / "leases.json"
    path.write_text(json.dumps({"prefix": PREFIX, "revision": 40, "kvs": rows}))
    return str(path)


def test_audit_command_text_json_and_exit_codes(tmp_path, capsys):
    from reconciler.cli.main import main

    clean = _snapshot_file(tmp_path, [_CLEAN])
    assert main(["audit", "--leases-file", clean]) == 0
    out = capsys.readouterr().out
    assert "leases: 1 (1 ok, 0 reservations, 0 skipped)" in out and out.endswith("Audit: 0 to look at, 0 for information.\n")
    extra, _ = PLANTS["duplicate-vtep-mac"]
    dup = _snapshot_file(tmp_path, [_CLEAN] + [RawKV(kv.key, kv.value, kv.lease, 9) for kv in extra])
    assert main(["audit", "--leases-file", dup, "--output", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["clean"] is False and doc["revision"] == 40
    assert [(f["code"], f["keys"]) for f in doc["findings"]] == [
        ("duplicate-vtep-mac", [_CLEAN_KEY, f"{BASE}100.64.9.0-24"])]
    assert {s["key"]: s["standing"] for s in doc["leases"]} == {_CLEAN_KEY: "ok", f"{BASE}100.64.9.0-24": "skipped"}


def test_audit_of_a_missing_file_or_config_is_one_error_line(tmp_path, capsys):
    from reconciler.cli.main import main

    assert main(["audit", "--leases-file", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    path = tmp_path / "noconfig.json"
    path.write_text(json.dumps({"prefix": PREFIX, "revision": 1, "kvs": []}))
    assert main(["audit", "--leases-file", str(path)]) == 1
    assert "config" in capsys.readouterr().err
