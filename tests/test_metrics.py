"""The metric registry: every family from the first scrape, the real parser's reading of the
exposition, histograms, build info, label sets that stay bounded, the doc's list, and the HTTP
endpoint's handling of clients that hang up."""
from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.core.config import parse_network_config
from reconciler.core.leases import RawKV, validate_leases
from reconciler.agent.metrics import (CYCLE_BUCKETS, FAMILIES, LATENCY_BUCKETS, SKIP_REASONS, TRIGGERS, Metrics,
                                      build_info_labels, primary_trigger, serve_http, skip_reason_label)

CYCLE = "flannel_reconciler_cycle_duration_seconds"
LATENCY = "flannel_reconciler_etcd_to_kernel_seconds"
ROOT = Path(__file__).resolve().parent.parent


def parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """prometheus_client's text parser: family name -> [(sample name, labels, value)]; raises on bad text."""
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def series(families, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every series named ``sample``: sorted labels -> value."""
    return {tuple(sorted(labels.items())): v for samples in families.values() for name, labels, v in samples
            if name == sample}


def test_every_family_and_known_label_set_is_exported_at_0_from_the_start():
    fams = parse(Metrics().render())
    for name, family in FAMILIES.items():
        if family.kind == "histogram":
            assert series(fams, name + "_count") == {(): 0.0}, name
            assert series(fams, name + "_bucket")[(("le", "+Inf"),)] == 0.0
        elif family.label_sets():
            got = series(fams, name)
            want = {tuple(sorted(zip(family.labels, values))): 0.0 for values in family.label_sets()}
            assert got == want, name
        elif not family.labels:
            assert series(fams, name) == {(): 0.0}, name
    # The ones alerts hang on, spelled out.
    assert series(fams, "flannel_reconciler_ready") == {(): 0.0}
    assert len(series(fams, "flannel_reconciler_cycles_total")) == len(TRIGGERS) * 4
    assert series(fams, "flannel_reconciler_leases_skipped")[(("reason", "conflict"),)] == 0.0
    assert series(fams, "flannel_reconciler_operations_total")[
        (("kind", "fdb"), ("op", "delete"), ("result", "error"))] == 0.0


def test_the_process_and_python_series_come_with_the_registry():
    fams = parse(Metrics().render())
    rss = series(fams, "process_resident_memory_bytes")[()]
    with open("/proc/self/status") as f:
        vmrss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert rss > 0 and 0.5 < rss / vmrss < 2          # this process's RSS, read at about the same time
    assert series(fams, "process_cpu_seconds_total")[()] > 0
    assert series(fams, "process_open_fds")[()] >= 3
    assert ("implementation", "CPython") in next(iter(series(fams, "python_info")))


def test_cycle_duration_is_a_histogram_with_cumulative_buckets():
    m = Metrics()
    for v in (0.0005, 0.001, 0.003, 0.2, 99.0):
        m.observe(CYCLE, v)
    h = m.histogram(CYCLE)
    assert h["0.001"] == 2            # le: a value on a bound counts in that bucket
    assert h["0.005"] == 3 and h["0.25"] == 4 and h["30"] == 4 and h["+Inf"] == 5
    assert h["count"] == 5 and h["sum"] == pytest.approx(99.2045)
    counts = [h[k] for k in h if k not in ("sum", "count")]
    assert counts == sorted(counts)   # cumulative
    assert len(counts) == len(CYCLE_BUCKETS) + 1


def test_histogram_exposition_read_by_the_parser(caplog):
    m = Metrics()
    m.observe_hist(LATENCY, 0.07)
    with caplog.at_level(logging.WARNING, logger="flannel_reconciler"):
        m.observe_hist("custom_seconds", 3.0, buckets=(1.0, 5.0), kind="x")
    assert "custom_seconds is not declared" in caplog.text      # works, but said: declare it
    fams = parse(m.render())
    buckets = {dict(k)["le"]: v for k, v in series(fams, LATENCY + "_bucket").items()}
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets["0.05"] == 0 and buckets["0.1"] == 1 and buckets["+Inf"] == 1
    assert series(fams, LATENCY + "_sum") == {(): 0.07} and series(fams, LATENCY + "_count") == {(): 1}
    custom = {k: v for k, v in series(fams, "custom_seconds_bucket").items()}
    assert custom == {(("kind", "x"), ("le", "1.0")): 0, (("kind", "x"), ("le", "5.0")): 1,
                      (("kind", "x"), ("le", "+Inf")): 1}
    assert [f.type for f in text_string_to_metric_families(m.render()) if f.name == LATENCY] == ["histogram"]


def test_counters_and_gauges_read_back_and_scrape_alike():
    m = Metrics()
    m.inc("flannel_reconciler_operations_total", 3, kind="route", op="create", result="ok")
    m.inc("flannel_reconciler_operations_total", kind="route", result="ok", op="create")   # any keyword order
    m.set("flannel_reconciler_leases", 42)
    m.set("flannel_reconciler_leases_skipped", 2, reason="bad-key")
    assert m.get("flannel_reconciler_operations_total", kind="route", op="create", result="ok") == 4
    assert m.get("flannel_reconciler_leases") == 42
    assert m.get("flannel_reconciler_operations_total", kind="route", op="create", result="nope") == 0
    fams = parse(m.render())
    assert series(fams, "flannel_reconciler_operations_total")[
        (("kind", "route"), ("op", "create"), ("result", "ok"))] == 4
    assert series(fams, "flannel_reconciler_leases") == {(): 42}
    m.reset("flannel_reconciler_leases_skipped")       # back to 0, never absent
    assert series(parse(m.render()), "flannel_reconciler_leases_skipped")[(("reason", "bad-key"),)] == 0
    with pytest.raises(ValueError):                     # a label the family does not have is a bug
        m.inc("flannel_reconciler_dumps_total", why="x")


def test_build_info_names_version_backend_and_fast_path():
    class BatchedBackend:  # noqa: D401 - a stand-in with the real class name
        accelerated = True

    class PyrouteBackend:
        pass

    assert build_info_labels(BatchedBackend())["backend"] == "batched"
    assert build_info_labels(BatchedBackend())["fastpath"] == "true"
    from reconciler import __version__

    assert build_info_labels(PyrouteBackend()) == {"version": __version__, "backend": "pyroute2", "fastpath": "false"}
    m = Metrics()
    m.set_build_info(**build_info_labels(PyrouteBackend()))
    m.set_build_info(**build_info_labels(BatchedBackend()))   # replaces, never two series
    assert series(parse(m.render()), "flannel_reconciler_build_info") == {
        (("backend", "batched"), ("fastpath", "true"), ("version", __version__)): 1}


def test_a_cycle_counts_once_under_its_widest_trigger(tmp_path):
    from reconciler.core.desired import NodeParams
    from tests.agent_harness import offline_agent, queue_listing
    from tests.model_kernel import ModelKernel

    assert primary_trigger({"lease", "kernel"}) == "kernel"
    assert primary_trigger({"lease", "retry", "resync", "relist"}) == "resync"
    assert primary_trigger({"lease"}) == "lease"
    node = NodeParams(public_ip="198.18.0.1", underlay_mtu=1500, underlay="eth0")
    agent = offline_agent(ModelKernel(), CFG, node, str(tmp_path / "subnet.env"))
    queue_listing(agent, [])
    agent.cycle({"relist", "lease", "kernel"})          # no lease of ours yet: counted as no-lease
    cycles = series(parse(agent.metrics.render()), "flannel_reconciler_cycles_total")
    assert {k: v for k, v in cycles.items() if v} == {(("outcome", "no-lease"), ("trigger", "relist")): 1}
    assert all("+" not in dict(k)["trigger"] for k in cycles)


def _metric_calls() -> dict[str, set[str]]:
    """Metric names the agent's code updates, and the trigger words it wakes the worker with."""
    names, triggers = set(), set()
    for path in (ROOT / "reconciler").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r'metrics\.(?:inc|set|observe|observe_hist|reset)\(\s*"([a-z_:]+)"', text))
        triggers |= set(re.findall(r'(?:_mark|triggers\.add)\("([a-z-]+)"\)', text))
    return {"names": names, "triggers": triggers}


def test_every_metric_the_agent_updates_is_declared_and_every_trigger_has_a_label():
    calls = _metric_calls()
    assert len(calls["names"]) >= 10 and calls["triggers"] >= {"lease", "kernel", "relist", "resync", "retry"}
    assert calls["names"] <= set(FAMILIES), calls["names"] - set(FAMILIES)
    assert calls["triggers"] <= set(TRIGGERS), calls["triggers"] - set(TRIGGERS)


def _doc_table() -> dict[str, tuple[str, dict[str, tuple[str, ...]]]]:
    """docs/metrics.md's table: name -> (type, {label: values}) (values: the backquoted words)."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `([a-z_]+)` \| ([a-z]+)[^|]* \| ([^|]*) \|", line)
        if not m:
            continue
        labels = {}
        for part in m.group(3).split(";"):
            lm = re.match(r"\s*`([a-z_]+)`(?: \(|: )(.*)", part)
            if lm:
                labels[lm.group(1)] = tuple(re.findall(r"`([a-z0-9+-]+)`", lm.group(2)))
        rows[m.group(1)] = (m.group(2), labels)
    return rows


def test_docs_list_every_family_with_its_type_and_label_values():
    doc = _doc_table()
    assert set(doc) == set(FAMILIES)
    for name, family in FAMILIES.items():
        kind, labels = doc[name]
        assert kind == family.kind, name
        assert set(labels) == set(family.labels), name
        for label, values in family.labels.items():
            if values:                                      # known in advance: the doc lists them all
                assert labels[label] == values, (name, label)


CFG = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}')
P = "/coreos.com/network/subnets/"
GOOD = '{"PublicIP":"198.18.0.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}'
BAD = {
    "junk": ("x", "bad-key"),
    "100.64.300.0-24": (GOOD % (2, "0a:58:00:00:00:02"), "bad-key"),
    "100.64.3.1-24": (GOOD % (3, "0a:58:00:00:00:03"), "bad-key"),
    "100.64.4.0-99": (GOOD % (4, "0a:58:00:00:00:04"), "bad-key"),
    "100.64.5.0-24": ("{not json", "bad-value"),
    "100.64.6.0-24": ("[1]", "bad-value"),
    "100.64.7.0-24": ('{"PublicIPv6":null,"BackendType":"vxlan"}', "missing-field"),
    "100.64.8.0-24": ('{"PublicIP":"198.18.0.8","PublicIPv6":null,"BackendType":"vxlan","BackendData":'
                      '{"VNI":1,"VtepMAC":"zz"}}', "bad-value"),
    "100.99.9.0-24": (GOOD % (9, "0a:58:00:00:00:09"), "outside-network"),
    "100.64.10.0-25": (GOOD % (10, "0a:58:00:00:00:0a"), "wrong-prefix-length"),
    "100.64.11.0-24": ('{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}', "not-vxlan"),
    "100.64.12.0-24": (GOOD.replace('"VNI":1', '"VNI":7') % (12, "0a:58:00:00:00:0c"), "vni-mismatch"),
    "100.64.13.0-24": (GOOD % (14, "0a:58:00:00:00:0e"), "conflict"),   # same PublicIP as the next
    "100.64.14.0-24": (GOOD % (14, "0a:58:00:00:00:0f"), "conflict"),
}


def test_every_skip_message_maps_to_a_bounded_reason():
    kvs = [RawKV(P + k, v, 0, i + 1) for i, (k, (v, _)) in enumerate(BAD.items())]
    _leases, skipped = validate_leases(CFG, kvs, "/coreos.com/network")
    labels = {s.key[len(P):]: skip_reason_label(s.reason) for s in skipped}
    want = {k: label for k, (_, label) in BAD.items()}
    del want["100.64.13.0-24"]                                  # written first: it wins
    assert labels == want, {s.key: s.reason for s in skipped}
    assert set(labels.values()) <= set(SKIP_REASONS)
    assert skip_reason_label("something new 198.18.0.1") == "other"


def _reset_mid_request(port: int, entered: threading.Event, closed: threading.Event) -> None:
    """Send a request, then reset the connection (RST, not FIN) while the route is answering it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(5)
    closed.set()                # closed with linger 0: the RST is on its way before the route answers


def test_a_client_that_resets_its_connection_costs_no_traceback(capfd, caplog):
    """A scraper that hangs up mid-request: no traceback on stderr, at most one debug line per
    CLIENT_ERROR_LOG_INTERVAL, and the endpoint serves on."""
    pending: list[tuple[threading.Event, threading.Event]] = []

    def slow():
        entered, closed = pending[-1]
        entered.set()
        closed.wait(5)
        return 200, "text/plain", "x" * 100_000

    endpoint = serve_http("127.0.0.1", 0, {"/slow": slow, "/ok": lambda: (200, "text/plain", "fine\n")})
    try:
        port = endpoint.server_address[1]
        caplog.set_level(logging.DEBUG, logger="flannel_reconciler")
        for _ in range(5):
            pending.append((threading.Event(), threading.Event()))
            _reset_mid_request(port, *pending[-1])
        deadline = time.monotonic() + 10
        while endpoint.failed_requests < 5:
            assert time.monotonic() < deadline, f"{endpoint.failed_requests} failed requests seen"
            time.sleep(0.02)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ok", timeout=5) as resp:
            assert resp.read() == b"fine\n"
    finally:
        endpoint.shutdown()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    lines = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG, [r.getMessage() for r in caplog.records]


def test_a_route_that_raises_is_one_rate_limited_error_with_its_traceback(caplog):
    def broken():
        raise RuntimeError("render failed")

    endpoint = serve_http("127.0.0.1", 0, {"/broken": broken})
    try:
        port = endpoint.server_address[1]
        with caplog.at_level(logging.DEBUG, logger="flannel_reconciler"):
            for _ in range(3):
                with pytest.raises(OSError):        # the connection closes without an answer
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/broken", timeout=5).read()
            deadline = time.monotonic() + 10
            while endpoint.failed_requests < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        endpoint.shutdown()
    errors = [r for r in caplog.records if "request from" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert errors[0].exc_info and "render failed" in str(errors[0].exc_info[1])
