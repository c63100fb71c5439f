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
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

__all__ = ["HTTPEndpoint", "Metrics", "serve_http"]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = lambda v: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    """Counters and gauges keyed by (name, labels)."""

    HELP = {
        "flannel_reconciler_cycles_total": ("counter", "Reconcile cycles run, by trigger and outcome."),
        "flannel_reconciler_cycle_duration_seconds": ("summary", "Time spent in reconcile cycles."),
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
        "flannel_reconciler_ready": ("gauge", "1 once the first full sync is done and subnet.env written."),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

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
        self.inc(name + "_sum", seconds)
        self.inc(name + "_count", 1)

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        out: list[str] = []
        announced: set[str] = set()
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
