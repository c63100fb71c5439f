"""The command line against a real etcd: snapshot, and plan reading etcd by default."""
from __future__ import annotations

import json
from pathlib import Path

from reconciler.cli.main import EXAMPLE_SNAPSHOT, main
from reconciler.core.leases import parse_snapshot


def _load_example(store) -> None:
    """The example cluster's config and leases, written under the store's prefix."""
    snap = parse_snapshot(Path(EXAMPLE_SNAPSHOT).read_text())
    for kv in snap.kvs:
        key = store.prefix + kv.key[len(snap.prefix):]
        store.put(key, kv.value)


def test_snapshot_then_offline_plan_equals_plan_from_etcd(etcd_shared, etcd_store, tmp_path, capsys):
    _load_example(etcd_store)
    source = ["--etcd-endpoints", etcd_shared.endpoint, "--etcd-prefix", etcd_store.prefix]
    out_file = tmp_path / "snap.json"
    assert main(["snapshot", *source, "-o", str(out_file)]) == 0
    snap = json.loads(out_file.read_text())
    assert snap["prefix"] == etcd_store.prefix and snap["revision"] > 0
    assert len(snap["kvs"]) == 4 and all(kv["lease"] == 0 for kv in snap["kvs"])

    capsys.readouterr()
    node = ["--public-ip", "198.18.0.2", "--offline", "--output", "json"]
    assert main(["plan", *source, *node]) == 2
    from_etcd = json.loads(capsys.readouterr().out)
    assert main(["plan", "--leases-file", str(out_file), *node]) == 2
    from_file = json.loads(capsys.readouterr().out)
    assert from_etcd == from_file
    assert from_etcd["node"] == {"public_ip": "198.18.0.2", "subnet": "100.64.2.0/24"}


def test_unreachable_etcd_is_a_clear_error(capsys):
    code = main(["plan", "--etcd-endpoints", "http://127.0.0.1:9", "--etcd-timeout", "1",
                 "--public-ip", "198.18.0.1", "--offline"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "127.0.0.1:9" in err
