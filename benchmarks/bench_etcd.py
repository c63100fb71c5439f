"""How long the etcd seam takes to notice what its tests say it notices: each figure is a ratio
to the timeout it is configured with, never a wall-clock time on its own.

Run: ``python -m pytest benchmarks/bench_etcd.py -s`` (needs ``/usr/bin/etcd``).  The behaviour
itself (the watch ends, the right error is raised, the store recovers) is ``tests/test_etcd.py``'s.
"""
from __future__ import annotations

import threading
import time

import pytest

from reconciler.core.errors import EtcdError
from reconciler.etcd.store import EtcdStore
from tests.conftest_etcd import etcd_prefix, etcd_server, etcd_shared, etcd_store  # noqa: F401
from tests.etcd_server import free_port

pytestmark = [pytest.mark.etcd]

#: How often a watch checks its stop event (``EtcdStore.watch``'s docstring).
STOP_POLL = 0.2


def _ratio(what: str, elapsed: float, unit: float) -> float:
    print(f"\n{what}: {elapsed:.2f}s = {elapsed / unit:.1f} x {unit:g}s")
    return elapsed / unit


def test_a_stopped_idle_watch_ends_within_a_few_polls(etcd_store):  # noqa: F811
    stop = threading.Event()
    events = etcd_store.watch(etcd_store.snapshot().revision + 1, stop)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert list(events) == []
    assert _ratio("idle watch stop", time.monotonic() - t0 - 0.3, STOP_POLL) < 8


def test_a_hung_server_is_given_up_after_give_up_after(etcd_server):  # noqa: F811
    give_up = 3.0
    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        events = store.watch(store.snapshot().revision + 1, progress_interval=0.5, give_up_after=give_up)
        store.put(store.subnets_prefix + "10.244.1.0-24", "x")
        next(events)
        etcd_server.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(EtcdError, match="no endpoint answered"):
                next(events)
            ratio = _ratio("hung watch given up", time.monotonic() - t0, give_up)
        finally:
            etcd_server.resume()
    assert 0.8 < ratio < 2.7


def test_an_unreachable_endpoint_fails_within_two_attempts_and_a_wait():
    timeout = 1.0
    with EtcdStore([f"http://127.0.0.1:{free_port()}"], timeout=timeout) as store:
        t0 = time.monotonic()
        with pytest.raises(EtcdError):
            store.snapshot()
        assert _ratio("unreachable endpoint", time.monotonic() - t0, timeout) < 3.5


def test_a_hung_server_call_times_out_within_twice_its_timeout_and_a_retry(etcd_server):  # noqa: F811
    timeout = 1.0
    with EtcdStore([etcd_server.endpoint], timeout=timeout) as store:
        store.put_config("{}")
        etcd_server.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(EtcdError):
                store.get_config()
            ratio = _ratio("hung call", time.monotonic() - t0, timeout)
        finally:
            etcd_server.resume()
    assert ratio < 4.0
