"""A tiny Prometheus text-format registry, and the agent's HTTP endpoints.

No client library: the agent exports a handful of series, and the text
exposition format (version 0.0.4) is a few lines of code.  Thread-safe: the
worker updates it while the HTTP thread renders it.

Endpoints (``--healthz-port``, ``--metrics-port``; the same server when the
ports are equal):

* ``GET /healthz``: 200 while the reconcile loop is alive (a cycle finished
  within the liveness window), 503 otherwise.  flanneld's always says 200;
  ours goes 503 when the loop hangs, like Felix's watchdog.
* ``GET /readyz``: 200 after the first full sync *and* subnet.env written
  (what the CNI plugin needs), 503 before.
* ``GET /metrics``: the series below.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
from bisect import bisect_left
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

__all__ = ["CYCLE_BUCKETS", "HTTPEndpoint", "LATENCY_BUCKETS", "Metrics", "build_info_labels", "serve_http",
           "skip_reason_label"]

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


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = lambda v: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    """Counters and gauges keyed by (name, labels)."""

    HELP = {
        "flannel_reconciler_cycles_total": ("counter", "Reconcile cycles run, by trigger and outcome."),
        "flannel_reconciler_cycle_duration_seconds": ("histogram", "Time spent in reconcile cycles."),
        "flannel_reconciler_etcd_to_kernel_seconds": (
            "histogram", "From a lease change read off the etcd watch to the end of the cycle that applied it."),
        "flannel_reconciler_build_info": (
            "gauge", "Always 1: the version, the netlink backend, and whether the compiled fast path is in use."),
        "flannel_reconciler_config_changed": (
            "gauge", "1 when the network config in etcd differs from the one the agent started with."),
        "flannel_reconciler_lease_revision": (
            "gauge", "The etcd revision of the last lease change folded into the agent's state."),
        "flannel_reconciler_own_public_ip_duplicates": (
            "gauge", "Other leases carrying this node's PublicIP (ignored: ours is the one we keep alive)."),
        "flannel_reconciler_dumps_total": ("counter", "Full kernel dumps (resyncs, and after device changes)."),
        "flannel_reconciler_subnet_file_errors_total": ("counter", "Failed attempts to write subnet.env."),
        "flannel_reconciler_operations_total": ("counter", "Kernel operations by kind, op and result."),
        "flannel_reconciler_drift_repaired_total": (
            "counter", "Kernel objects repaired without a lease change (drift found by resync or link events)."),
        "flannel_reconciler_leases_skipped": ("gauge", "Leases left out of the desired state, by reason."),
        "flannel_reconciler_leases": ("gauge", "Valid leases in the desired state."),
        "flannel_reconciler_etcd_watch_restarts_total": (
            "counter", "Times the lease watch was re-created or the lease list re-read."),
        "flannel_reconciler_etcd_up": ("gauge", "1 while etcd answers, 0 while the agent fails static."),
        "flannel_reconciler_last_successful_sync_timestamp_seconds": (
            "gauge", "Unix time of the last cycle that applied without a failed operation."),
        "flannel_reconciler_ready": ("gauge", "1 once the first full sync is done and subnet.env written, "
                                              "while no data-plane condition fails."),
        "flannel_reconciler_condition": (
            "gauge", "1 while a data-plane condition holds, 0 while it fails (its reason is on /readyz)."),
    }

    #: Histogram families and their bucket bounds (``observe`` uses these).
    BUCKETS = {
        "flannel_reconciler_cycle_duration_seconds": CYCLE_BUCKETS,
        "flannel_reconciler_etcd_to_kernel_seconds": LATENCY_BUCKETS,
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # (name, labels) -> [bounds, per-bucket counts (not cumulative), sum, count]
        self._hists: dict[tuple[str, tuple[tuple[str, str], ...]], list] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def reset(self, name: str) -> None:
        """Drop every series of a gauge family (before setting its new values)."""
        with self._lock:
            for key in [k for k in self._values if k[0] == name]:
                del self._values[key]

    def observe(self, name: str, seconds: float) -> None:
        """One observation: into the histogram when ``name`` has buckets, else a summary (sum, count)."""
        buckets = self.BUCKETS.get(name)
        if buckets is not None:
            self.observe_hist(name, seconds, buckets)
            return
        self.inc(name + "_sum", seconds)
        self.inc(name + "_count", 1)

    def observe_hist(self, name: str, value: float, buckets: tuple[float, ...] | None = None,
                     **labels: str) -> None:
        """One observation of histogram ``name`` (buckets: ``BUCKETS[name]`` unless given).

        The bounds of a series are fixed by its first observation: Prometheus
        cannot aggregate series with different buckets.
        """
        bounds = tuple(sorted(buckets or self.BUCKETS.get(name) or LATENCY_BUCKETS))
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            h = self._hists.get(key)
            if h is None:
                h = self._hists[key] = [bounds, [0] * (len(bounds) + 1), 0.0, 0]
            h[1][bisect_left(h[0], value)] += 1     # le: a value equal to a bound falls in that bucket
            h[2] += value
            h[3] += 1

    def histogram(self, name: str, **labels: str) -> dict[str, float] | None:
        """``{le: cumulative count, ..., "+Inf": n, "sum": s, "count": n}`` of one series, or None."""
        with self._lock:
            h = self._hists.get((name, tuple(sorted(labels.items()))))
            if h is None:
                return None
            bounds, counts, total, n = h[0], list(h[1]), h[2], h[3]
        out: dict[str, float] = {}
        running = 0
        for bound, c in zip(bounds + (float("inf"),), counts):
            running += c
            out[_num(bound) if bound != float("inf") else "+Inf"] = running
        out["sum"], out["count"] = total, n
        return out

    def set_build_info(self, version: str, backend: str, fastpath: str) -> None:
        self.reset("flannel_reconciler_build_info")
        self.set("flannel_reconciler_build_info", 1, version=version, backend=backend, fastpath=fastpath)

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
            hists = sorted((k, (h[0], list(h[1]), h[2], h[3])) for k, h in self._hists.items())
        out: list[str] = []
        announced: set[str] = set()
        for (name, labels), (bounds, counts, total, n) in hists:
            if name not in announced:
                kind, text = self.HELP.get(name, ("histogram", name))
                out.append(f"# HELP {name} {text}")
                out.append(f"# TYPE {name} histogram")
                announced.add(name)
            running = 0
            for bound, c in zip(bounds + (float("inf"),), counts):
                running += c
                le = "+Inf" if bound == float("inf") else _num(bound)
                out.append(f"{name}_bucket{_labels(dict(labels) | {'le': le})} {running}")
            out.append(f"{name}_sum{_labels(dict(labels))} {_num(total)}")
            out.append(f"{name}_count{_labels(dict(labels))} {n}")
        for (name, labels), value in items:
            family = name.removesuffix("_sum").removesuffix("_count") if name not in self.HELP else name
            if family not in announced and family in self.HELP:
                kind, text = self.HELP[family]
                out.append(f"# HELP {family} {text}")
                out.append(f"# TYPE {family} {kind}")
                announced.add(family)
            num = repr(value) if value != int(value) else str(int(value))
            out.append(f"{name}{_labels(dict(labels))} {num}")
        return "\n".join(out) + "\n"


def _num(value: float) -> str:
    """Prometheus text for a number: integers without a fraction, others as Python's repr."""
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR (HTTPServer's default too): a quick restart must not wait
    # for the old connections' TIME_WAIT to bind again.
    allow_reuse_address = True


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
        cls = type("_Server", (_Server,), {"address_family": family})
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
