"""The agent's HTTP side: /healthz, /readyz and /metrics.

* /healthz is liveness: 200 while cycles keep finishing (or before the
  first), 503 when none finished for the liveness window or when the agent is
  of no use any more (its namespace was deleted); a kubelet restarts us then.
* /readyz is readiness: 503 before the first full sync, while a data-plane
  condition fails (``conditions.py``) or while this node's identity in etcd is
  in doubt; 200 otherwise.
* /metrics is the Prometheus text of the agent's ``Metrics``.

Each page is a method returning (status, content type, body), served by
``metrics.serve_http`` on the ports the options name (one port may serve all
three).  What the pages read is given at construction: the agent's options,
clock, state and metrics, and two callables for what other parts decide.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from reconciler.agent.metrics import CONTENT_TYPE, serve_http

if TYPE_CHECKING:
    from reconciler.agent.metrics import HTTPEndpoint, Metrics
    from reconciler.core.health import Condition

__all__ = ["Endpoints", "Liveness"]

Page = tuple[int, str, str]


class Liveness(Protocol):
    """What the worker publishes about itself (the agent's state)."""

    #: Why the agent is of no use any more although its loop runs (None: it is of use).
    broken: str | None
    #: The agent's clock when the last cycle ended (0: none yet).
    last_cycle_end: float
    #: The first full sync is done and subnet.env written.
    ready: bool


class Endpoints:
    """``failing``: the data-plane conditions that fail now; ``identity``: why our identity in
    etcd is in doubt ("" when it is not)."""

    def __init__(self, opts: Any, clock: Callable[[], float], state: Liveness, metrics: Metrics,
                 failing: Callable[[], list[Condition]], identity: Callable[[], str]) -> None:
        self.opts = opts
        self.clock = clock
        self.state = state
        self.metrics = metrics
        self.failing = failing
        self.identity = identity
        self._servers: list[HTTPEndpoint] = []

    def start(self) -> None:
        """Serve the pages on the ports the options name (none: nothing is served)."""
        routes = {"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics_page}
        ports: dict[int, dict] = {}
        if self.opts.healthz_port:
            ports.setdefault(self.opts.healthz_port, {}).update(
                {"/healthz": routes["/healthz"], "/readyz": routes["/readyz"]})
        if self.opts.metrics_port:
            ports.setdefault(self.opts.metrics_port, {})["/metrics"] = routes["/metrics"]
        for port, r in ports.items():
            self._servers.append(serve_http(self.opts.healthz_ip, port, r))

    def shutdown(self) -> None:
        for s in self._servers:
            s.shutdown()

    def liveness_window(self) -> float:
        return self.opts.liveness_window or max(60.0, 3 * self.opts.resync_interval)

    def healthz(self) -> Page:
        if self.state.broken:
            return 503, "text/plain", f"{self.state.broken}\n"
        age = self.clock() - self.state.last_cycle_end
        if self.state.last_cycle_end and age <= self.liveness_window():
            return 200, "text/plain", f"flannel-reconciler is running (last cycle {age:.1f}s ago)\n"
        if not self.state.last_cycle_end:
            return 200, "text/plain", "flannel-reconciler is starting\n"
        return 503, "text/plain", f"reconcile loop stalled: last cycle {age:.1f}s ago\n"

    def readyz(self) -> Page:
        bad = self.failing()
        if self.state.ready and bad:
            return 503, "text/plain", "".join(f"not ready: {c.name}: {c.reason}\n" for c in bad)
        if self.state.ready:
            why = self.identity()
            if why:
                return 503, "text/plain", f"flannel-reconciler is not ready: {why}\n"
            return 200, "text/plain", "flannel-reconciler is ready\n"
        return 503, "text/plain", "flannel-reconciler is not ready yet\n"

    def metrics_page(self) -> Page:
        return 200, CONTENT_TYPE, self.metrics.render()
