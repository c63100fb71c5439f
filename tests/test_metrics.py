"""The metric registry: histograms, build info, and label sets that stay bounded."""
from __future__ import annotations

import re

import pytest

from reconciler.core.config import parse_network_config
from reconciler.core.leases import RawKV, validate_leases
from reconciler.agent.metrics import (CYCLE_BUCKETS, LATENCY_BUCKETS, SKIP_REASONS, Metrics, build_info_labels,
                                skip_reason_label)

CYCLE = "flannel_reconciler_cycle_duration_seconds"
LATENCY = "flannel_reconciler_etcd_to_kernel_seconds"


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


def test_histogram_text_exposition():
    m = Metrics()
    m.observe_hist(LATENCY, 0.07)
    m.observe_hist("custom_seconds", 3.0, buckets=(1.0, 5.0), kind="x")
    text = m.render()
    assert f"# TYPE {LATENCY} histogram" in text
    assert f'{LATENCY}_bucket{{le="0.05"}} 0\n{LATENCY}_bucket{{le="0.1"}} 1' in text
    assert f'{LATENCY}_bucket{{le="+Inf"}} 1\n{LATENCY}_sum 0.07\n{LATENCY}_count 1' in text
    assert 'custom_seconds_bucket{kind="x",le="1"} 0\ncustom_seconds_bucket{kind="x",le="5"} 1' in text
    assert len([ln for ln in text.splitlines() if ln.startswith(LATENCY + "_bucket")]) == len(LATENCY_BUCKETS) + 1
    # Every sample line is "name{labels} number".
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+', line), line


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
    lines = [ln for ln in m.render().splitlines() if ln.startswith("flannel_reconciler_build_info{")]
    assert lines == [f'flannel_reconciler_build_info{{backend="batched",fastpath="true",version="{__version__}"}} 1']


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
