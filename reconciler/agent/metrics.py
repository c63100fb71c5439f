"""The agent's Prometheus metrics (prometheus_client), and its HTTP endpoints.

``Metrics`` declares every family the agent exports (``FAMILIES``, listed in
docs/metrics.md) in a prometheus_client registry, with each label set known
in advance created at 0, so that a family is there from the first scrape
(``rate()`` and ``absent()`` need it), and adds prometheus_client's
``process_*`` and ``python_*`` collectors.  Thread-safe: the worker updates
it while the HTTP thread renders it.

Endpoints (``--healthz-port``, ``--metrics-port``; the same server when the
ports are equal):

* ``GET /healthz``: 200 while the reconcile loop is alive (a cycle finished
  within the liveness window), 503 otherwise.  flanneld's always says 200;
  ours goes 503 when the loop hangs, like Felix's watchdog.
* ``GET /readyz``: 200 after the first full sync *and* subnet.env written
  (what the CNI plugin needs), 503 before.
* ``GET /metrics``: the registry in the text format 0.0.4.
"""
from __future__ import annotations

import itertools
import logging
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from reconciler.core.health import CONDITIONS

import prometheus_client
from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)

__all__ = ["CONTENT_TYPE", "CYCLE_BUCKETS", "FAMILIES", "Family", "HTTPEndpoint", "LATENCY_BUCKETS", "Metrics",
           "TRIGGERS", "build_info_labels", "primary_trigger", "serve_http", "skip_reason_label"]

# A ``_created`` series per counter and histogram series would double the
# scrape for a start time nobody reads (the process start time is
# ``process_start_time_seconds``).  The agent is the process's only user of
# prometheus_client, so the library-wide switch is ours to set.
prometheus_client.disable_created_metrics()

#: The exposition's content type (the text format 0.0.4, which every Prometheus reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds.  A converged cycle is one dump and an empty plan (milliseconds at
#: 100 nodes, tens of ms at 5,000); a cold install at 5,000 nodes is about a
#: second of kernel time; anything past 10 s is a stuck netlink call.
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds from a lease event read off the etcd watch to the end of the
#: cycle that applied it: one incremental cycle (about a millisecond plus the
#: kernel's time), or longer while cycles queue up.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Bounded label sets (docs/metrics.md lists them): every label value the agent
#: exports comes from one of these, never from a lease's or a kernel's text.
SKIP_REASONS = ("bad-key", "bad-value", "missing-field", "key-value-mismatch", "outside-network",
                "wrong-prefix-length", "not-vxlan", "vni-mismatch", "conflict", "underlay-capture",
                "unusable-public-ip", "other")
#: What woke the worker, widest first: a cycle's ``trigger`` label is the
#: first of these among its triggers (``primary_trigger``), because the widest
#: one sets what the cycle costs (a resync dumps the kernel, a relist replaces
#: the lease table, kernel notifications and retries revisit a few objects, a
#: lease event one lease).
TRIGGERS = ("resync", "relist", "underlay", "etcd", "kernel", "retry", "lease")
OUTCOMES = ("ok", "failed", "error", "no-lease")
OP_KINDS = ("link", "address", "route", "neigh", "fdb", "nexthop", "rule")
OPS = ("create", "update", "delete")
OP_RESULTS = ("ok", "error", "skipped")
WATCH_RESTART_REASONS = ("compacted", "error", "rolled-back")
#: Writes by others over this node's lease key (``LeaseKeeper``): written back unless taken.
OVERWRITE_KINDS = ("unparseable", "foreign", "taken")

_SKIP_PATTERNS = (
    ("bad-key", re.compile(r"^(not a subnet key|'.*' is not an IPv[46] address|bad IPv[46] prefix length|"
                           r"not aligned)")),
    ("key-value-mismatch", re.compile(r"^key/value mismatch")),
    ("missing-field", re.compile(r"\bis missing\b")),
    ("bad-value", re.compile(r"^(value is not valid JSON|value must be|.*must be (a|an) )")),
    ("outside-network", re.compile(r"^(IPv6 )?subnet .* is outside")),
    ("wrong-prefix-length", re.compile(r"^(IPv6 )?subnet .* is a /\d+, but")),
    ("not-vxlan", re.compile(r"^BackendType .* is not vxlan")),
    ("vni-mismatch", re.compile(r"VNI .* differs")),
    ("conflict", re.compile(r"^conflict:")),
    ("underlay-capture", re.compile(r"^underlay capture:")),
    ("unusable-public-ip", re.compile(r"^unusable PublicIP:")),
    ("bad-value", re.compile(r"(VtepMAC|VNI|PublicIP)")),
)


def skip_reason_label(reason: str) -> str:
    """The bounded ``reason`` label of ``flannel_reconciler_leases_skipped`` for a skip message.

    The messages name keys, addresses and MACs (unbounded); the label is one
    of ``SKIP_REASONS``.
    """
    for label, rx in _SKIP_PATTERNS:
        if rx.search(reason):
            return label
    return "other"


def primary_trigger(triggers: Iterable[str]) -> str:
    """The ``trigger`` label of a cycle woken by ``triggers``: the widest of them (``TRIGGERS``).

    One value per cycle, so that the family sums to the number of cycles;
    ``other`` only for a trigger missing from ``TRIGGERS`` (a test checks
    that the agent has none)."""
    for t in TRIGGERS:
        if t in triggers:
            return t
    return "other"


def build_info_labels(backend) -> dict[str, str]:
    """``version``, ``backend`` and ``fastpath`` of ``flannel_reconciler_build_info``.

    ``backend`` is ``pyroute2`` or ``batched`` (or the class name of a test
    double); ``fastpath`` is ``true`` when the compiled decoders are in use.
    """
    from reconciler import __version__

    name = type(backend).__name__
    kind = {"PyrouteBackend": "pyroute2", "BatchedBackend": "batched"}.get(name, name.lower()[:30])
    return {"version": __version__, "backend": kind,
            "fastpath": "true" if getattr(backend, "accelerated", False) else "false"}


@dataclass(frozen=True)
class Family:
    """One metric family the agent exports.

    ``labels`` maps each label name to all its values: every combination is
    exported from the start, at 0.  An empty tuple of values means values not
    known in advance (the build info): such series appear when first set.
    """

    kind: str                   # "counter", "gauge" or "histogram"
    help: str
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    buckets: tuple[float, ...] | None = None

    def label_sets(self) -> list[tuple[str, ...]]:
        """Every label set known in advance (values in the order of ``labels``)."""
        if not self.labels or not all(self.labels.values()):
            return []
        return list(itertools.product(*self.labels.values()))


#: Every family the agent exports (docs/metrics.md says what each means; a
#: test holds the two lists equal).  A new metric is declared here first:
#: ``Metrics.inc``/``set``/``observe`` find its type, help and label sets here.
FAMILIES: dict[str, Family] = {
    "flannel_reconciler_build_info": Family(
        "gauge", "Always 1: the version, the netlink backend, and whether the compiled fast path is in use.",
        {"backend": (), "fastpath": (), "version": ()}),
    "flannel_reconciler_cycles_total": Family(
        "counter", "Reconcile cycles run, by their widest trigger and their outcome.",
        {"trigger": TRIGGERS, "outcome": OUTCOMES}),
    "flannel_reconciler_cycle_duration_seconds": Family(
        "histogram", "Time spent in reconcile cycles.", buckets=CYCLE_BUCKETS),
    "flannel_reconciler_etcd_to_kernel_seconds": Family(
        "histogram", "From a lease change read off the etcd watch to the end of the cycle that applied it.",
        buckets=LATENCY_BUCKETS),
    "flannel_reconciler_operations_total": Family(
        "counter", "Kernel operations by kind, op and result.",
        {"kind": OP_KINDS, "op": OPS, "result": OP_RESULTS}),
    "flannel_reconciler_drift_repaired_total": Family(
        "counter", "Kernel objects repaired without a lease change (drift found by resync or link events)."),
    "flannel_reconciler_leases": Family("gauge", "Valid leases in the desired state."),
    "flannel_reconciler_leases_skipped": Family(
        "gauge", "Leases left out of the desired state, by reason.", {"reason": SKIP_REASONS}),
    "flannel_reconciler_etcd_watch_restarts_total": Family(
        "counter", "Times the lease watch was re-created or the lease list re-read.",
        {"reason": WATCH_RESTART_REASONS}),
    "flannel_reconciler_etcd_up": Family("gauge", "1 while etcd answers, 0 while the agent fails static."),
    "flannel_reconciler_last_successful_sync_timestamp_seconds": Family(
        "gauge", "Unix time of the last cycle that applied without a failed operation (0: none yet)."),
    "flannel_reconciler_ready": Family(
        "gauge", "1 once the first full sync is done and subnet.env written, while no data-plane condition "
                 "fails; 0 before and while one does."),
    "flannel_reconciler_condition": Family(
        "gauge", "1 while a data-plane condition holds, 0 while it fails (its reason is on /readyz).",
        {"condition": CONDITIONS}),
    "flannel_reconciler_dumps_total": Family(
        "counter", "Full kernel dumps (resyncs, and after device changes)."),
    "flannel_reconciler_subnet_file_errors_total": Family("counter", "Failed attempts to write subnet.env."),
    "flannel_reconciler_lease_revision": Family(
        "gauge", "The etcd revision of the last lease change folded into the agent's state."),
    "flannel_reconciler_own_public_ip_duplicates": Family(
        "gauge", "Other leases carrying this node's PublicIP (ignored: ours is the one we keep alive)."),
    "flannel_reconciler_config_changed": Family(
        "gauge", "1 when the network config in etcd differs from the one the agent started with."),
    "flannel_reconciler_config_missing": Family("gauge", "1 while the network config key is missing from etcd."),
    "flannel_reconciler_etcd_revision_backwards": Family(
        "gauge", "1 while etcd's history went back (wiped or restored): re-listed, deletions held back."),
    "flannel_reconciler_etcd_rollbacks_total": Family(
        "counter", "Times etcd answered with a revision below one already seen, or another cluster id."),
    "flannel_reconciler_own_lease_not_ours": Family(
        "gauge", "1 while this node's lease key holds something else and could not be written back."),
    "flannel_reconciler_own_lease_overwritten_total": Family(
        "counter", "Writes by others over this node's lease key, by kind (written back unless taken).",
        {"reason": OVERWRITE_KINDS}),
}

log = logging.getLogger("flannel_reconciler")

_KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class Metrics:
    """The agent's registry: ``FAMILIES`` plus the process's ``process_*`` and ``python_*`` series.

    The agent names a series by family name and labels (``inc(name,
    **labels)``); the prometheus_client child of each label set is looked up
    once and kept, so an update costs a dict lookup and the child's lock.
    """

    FAMILIES = FAMILIES
    #: Histogram families and their bucket bounds.
    BUCKETS = {name: f.buckets for name, f in FAMILIES.items() if f.kind == "histogram"}

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._families: dict[str, tuple[Family, object]] = {}
        # (name, sorted labels) -> the prometheus_client child of that series
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], object] = {}
        # The same, keyed by the labels in the caller's order: the updates' lookup, without a sort.
        self._fast: dict[tuple[str, tuple[tuple[str, str], ...]], object] = {}
        for name, family in self.FAMILIES.items():
            self._declare(name, family)
        ProcessCollector(registry=self.registry)    # process_resident_memory_bytes, _cpu_seconds_total, ...
        PlatformCollector(registry=self.registry)   # python_info
        GCCollector(registry=self.registry)         # python_gc_*

    # ------------------------------------------------------------ families
    def _declare(self, name: str, family: Family) -> None:
        kw = {"buckets": family.buckets} if family.kind == "histogram" else {}
        metric = _KINDS[family.kind](name, family.help, labelnames=tuple(family.labels), registry=self.registry,
                                     **kw)
        self._families[name] = (family, metric)
        if not family.labels:
            self._children[(name, ())] = metric
        for values in family.label_sets():
            labels = dict(zip(family.labels, values))
            self._children[(name, tuple(sorted(labels.items())))] = metric.labels(**labels)

    def _child(self, name: str, labels: dict[str, str], kind: str, buckets: tuple[float, ...] | None = None):
        fast = (name, tuple(labels.items()))
        child = self._fast.get(fast)
        if child is not None:
            return child
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            child = self._children.get(key)
            if child is None:
                if name not in self._families:
                    # Exported from its first use only, and missing from the docs:
                    # declare it in FAMILIES.  A test keeps the agent free of these.
                    log.warning("metric %s is not declared in metrics.FAMILIES", name)
                    self._declare(name, Family(kind, name, {k: () for k in sorted(labels)},
                                               tuple(sorted(buckets or LATENCY_BUCKETS)) if kind == "histogram"
                                               else None))
                family, metric = self._families[name]
                # A label set not known in advance (the build info), or a wrong
                # label name (prometheus_client raises ValueError: a bug).
                child = metric.labels(**labels) if labels else metric
                self._children[key] = child
            self._fast[fast] = child
        return child

    # -------------------------------------------------------------- updates
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._child(name, labels, "counter").inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._child(name, labels, "gauge").set(value)

    def reset(self, name: str) -> None:
        """Every series of a gauge family back to 0 (before setting its new values); a series
        whose label set is not known in advance is dropped."""
        with self._lock:
            family, metric = self._families[name]
            known = {tuple(sorted(zip(family.labels, v))) for v in family.label_sets()}
            for key in [k for k in self._children if k[0] == name]:     # a few hundred keys: microseconds
                if key[1] in known or not family.labels:
                    self._children[key].set(0)
                else:
                    del self._children[key]
                    labels = dict(key[1])
                    metric.remove(*(labels[n] for n in family.labels))
                    for fast in [k for k in self._fast if k[0] == name and dict(k[1]) == labels]:
                        del self._fast[fast]

    def observe(self, name: str, seconds: float) -> None:
        """One observation of histogram ``name`` (its buckets: ``FAMILIES[name].buckets``)."""
        self._child(name, {}, "histogram").observe(seconds)

    def observe_hist(self, name: str, value: float, buckets: tuple[float, ...] | None = None,
                     **labels: str) -> None:
        """One observation of histogram ``name``.

        A family not in ``FAMILIES`` is created with ``buckets`` (default
        ``LATENCY_BUCKETS``) at its first observation; after that its bounds
        are fixed: Prometheus cannot aggregate series with different buckets.
        """
        self._child(name, labels, "histogram", buckets).observe(value)

    def set_build_info(self, version: str, backend: str, fastpath: str) -> None:
        self.reset("flannel_reconciler_build_info")
        self.set("flannel_reconciler_build_info", 1, version=version, backend=backend, fastpath=fastpath)

    # ---------------------------------------------------------------- reads
    def _samples(self, name: str, labels: dict[str, str]):
        child = self._children.get((name, tuple(sorted(labels.items()))))
        if child is None:
            return None
        return [s for m in child.collect() for s in m.samples]

    def get(self, name: str, **labels: str) -> float:
        """The value of a counter or gauge series (0 for a series that does not exist)."""
        for s in self._samples(name, labels) or ():
            if s.name in (name, name + "_total"):
                return s.value
        return 0.0

    def histogram(self, name: str, **labels: str) -> dict[str, float] | None:
        """``{le: cumulative count, ..., "+Inf": n, "sum": s, "count": n}`` of one series, or None."""
        samples = self._samples(name, labels)
        if samples is None:
            return None
        out: dict[str, float] = {}
        for s in samples:
            if s.name == name + "_bucket":
                le = float(s.labels["le"])
                out["+Inf" if le == float("inf") else _num(le)] = s.value
            elif s.name in (name + "_sum", name + "_count"):
                out[s.name[len(name) + 1:]] = s.value
        return out

    def render(self) -> str:
        """The exposition (text format 0.0.4, ``CONTENT_TYPE``)."""
        return generate_latest(self.registry).decode()


def _num(value: float) -> str:
    """A bucket bound as docs/metrics.md writes it: integers without a fraction, others as Python's repr."""
    return repr(float(value)) if value != int(value) else str(int(value))


#: Seconds a connection may sit idle before its thread gives up on it, so
#: that idle or half-open clients cannot pile up threads.
READ_TIMEOUT = 10.0
#: Seconds between attempts to bind a port that is taken.
BIND_RETRY = 5.0


def _handler(routes: dict[str, Callable[[], tuple[int, str, str]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # StreamRequestHandler applies it to the socket: a read that waits
        # longer ends the connection (and its thread).
        timeout = READ_TIMEOUT

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, "text/plain", "not found\n"
            else:
                status, ctype, body = route()
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # keep probes out of the agent's log
            pass

    return Handler


#: Seconds between two log lines about failed requests: a client that resets
#: every connection must not fill the log.
CLIENT_ERROR_LOG_INTERVAL = 60.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR (HTTPServer's default too): a quick restart must not wait
    # for the old connections' TIME_WAIT to bind again.
    allow_reuse_address = True
    endpoint: "HTTPEndpoint"

    def handle_error(self, request, client_address) -> None:
        # socketserver's default prints a traceback to stderr, once per failed
        # request: a scraper that hangs up early would write fifteen lines each time.
        self.endpoint._request_failed(sys.exc_info()[1], client_address)


class HTTPEndpoint:
    """An HTTP server that binds now, or keeps trying in the background.

    A port held by something else (another agent, the old process still
    shutting down) or an address not yet on the host must not stop the agent:
    the reconcile loop matters more than its probes.  Each failed attempt is
    logged, and ``bound`` tells whether the server is up.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Callable[[], tuple[int, str, str]]],
                 retry: float = BIND_RETRY, log: logging.Logger | None = None) -> None:
        self.host, self.port, self.retry = host, port, retry
        self._handler = _handler(routes)
        self._log = log or logging.getLogger("flannel_reconciler")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.last_error: str | None = None
        #: Requests that ended in an exception: clients that hung up or reset
        #: the connection mid-request, or a route that raised.
        self.failed_requests = 0
        self._failed_logged_at = float("-inf")
        self._failed_unlogged = 0
        if not self._try_bind():
            threading.Thread(target=self._retry_loop, name=f"http-bind-{port}", daemon=True).start()

    @property
    def bound(self) -> bool:
        return self.server is not None

    @property
    def server_address(self) -> tuple:
        return self.server.server_address if self.server else (self.host, self.port)

    def _try_bind(self) -> bool:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        cls = type("_Server", (_Server,), {"address_family": family, "endpoint": self})
        try:
            server = cls((self.host, self.port), self._handler)
        except OSError as exc:
            error = f"{exc.strerror or exc}"
            # Said once per distinct reason, not every few seconds for hours.
            level = logging.WARNING if error != self.last_error else logging.DEBUG
            self.last_error = error
            self._log.log(level, "http: cannot listen on %s port %d: %s; retrying every %gs",
                          self.host, self.port, error, self.retry)
            return False
        with self._lock:
            if self._stop.is_set():
                server.server_close()
                return True
            self.server = server
        self.last_error = None
        threading.Thread(target=server.serve_forever, name=f"http-{self.port}", daemon=True).start()
        return True

    def _request_failed(self, exc: BaseException | None, client) -> None:
        """One request ended in ``exc``: at most one log line per ``CLIENT_ERROR_LOG_INTERVAL``.

        A client's connection error (reset, broken pipe, timeout) is the
        client's business: a debug line.  Anything else is a bug of ours
        (a route raised): an error with its traceback."""
        with self._lock:
            self.failed_requests += 1
            now = time.monotonic()
            if now - self._failed_logged_at < CLIENT_ERROR_LOG_INTERVAL:
                self._failed_unlogged += 1
                return
            self._failed_logged_at, unlogged, self._failed_unlogged = now, self._failed_unlogged, 0
        more = f" ({unlogged} more failed requests not logged since the last such line)" if unlogged else ""
        peer = client[0] if isinstance(client, tuple) and client else client
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self._log.debug("http: port %d: client %s went away: %s%s", self.port, peer, exc, more)
        else:
            self._log.error("http: port %d: request from %s failed%s", self.port, peer, more, exc_info=exc)

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry):
            if self._try_bind():
                self._log.info("http: listening on %s port %d", self.host, self.port)
                return

    def shutdown(self) -> None:
        with self._lock:
            self._stop.set()
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def serve_http(host: str, port: int, routes: dict[str, Callable[[], tuple[int, str, str]]],
               retry: float | None = None) -> HTTPEndpoint:
    """Serve ``routes`` (path -> () -> (status, content type, body)) on a daemon thread;
    a port that cannot be bound yet is retried every ``retry`` seconds (``HTTPEndpoint``)."""
    return HTTPEndpoint(host, port, routes, retry=BIND_RETRY if retry is None else retry)
