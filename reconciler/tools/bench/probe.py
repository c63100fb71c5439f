"""Reading a running agent from outside: /proc for CPU and memory, /metrics for counters.

Nothing here asks the agent to do anything: CPU time is ``utime + stime`` of
``/proc/<pid>/stat`` (all threads), memory is ``VmRSS`` of
``/proc/<pid>/status``, and the counters are the Prometheus text the agent
serves anyway.  A counter the agent does not export reads as None, and the
report says "n/a" for it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["Counters", "cpu_seconds", "parse_metrics", "rss_mib", "wait_idle"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces: fields start after the last ")".
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> sample name -> [(labels, value)] (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@dataclass(frozen=True)
class Counters:
    """The agent counters one scenario step needs, read at one moment."""

    writes: float              # operations_total, every kind/op/result
    writes_by: dict            # (kind, op) -> count
    cycles: float              # cycles_total, every trigger/outcome
    dumps: float | None        # dumps_total, None when the agent does not export it
    #: cycles_total{trigger="resync"}: the periodic resync (or SIGHUP's), which dumps by design.
    resyncs: float = 0.0

    @classmethod
    def from_text(cls, text: str) -> "Counters":
        m = parse_metrics(text)
        by: dict[tuple[str, str], float] = {}
        for labels, v in m.get("flannel_reconciler_operations_total", []):
            k = (labels.get("kind", "?"), labels.get("op", "?"))
            by[k] = by.get(k, 0.0) + v
        dumps = m.get("flannel_reconciler_dumps_total")
        cycles = m.get("flannel_reconciler_cycles_total", [])
        return cls(writes=sum(by.values()), writes_by=by, cycles=sum(v for _, v in cycles),
                   dumps=sum(v for _, v in dumps) if dumps is not None else None,
                   resyncs=sum(v for labels, v in cycles if labels.get("trigger") == "resync"))

    @property
    def dumps_not_resync(self) -> float | None:
        """Dumps besides the resync cycles' own (one each): the ones an event caused."""
        return None if self.dumps is None else max(0.0, self.dumps - self.resyncs)

    def __sub__(self, other: "Counters") -> "Counters":
        keys = set(self.writes_by) | set(other.writes_by)
        by = {k: self.writes_by.get(k, 0.0) - other.writes_by.get(k, 0.0) for k in keys}
        dumps = None if self.dumps is None or other.dumps is None else self.dumps - other.dumps
        return Counters(self.writes - other.writes, {k: v for k, v in by.items() if v}, self.cycles - other.cycles,
                        dumps, self.resyncs - other.resyncs)


def wait_idle(pid: int, quiet: float = 1.0, timeout: float = 300.0, poll: float = 0.05) -> float:
    """Wait until the process used no CPU for ``quiet`` seconds.

    Returns the monotonic time of its last CPU use seen (a clock tick is
    10 ms, so this is accurate to about that plus ``poll``).  Raises
    TimeoutError when it never settles.
    """
    deadline = time.monotonic() + timeout
    last_cpu, last_busy = cpu_seconds(pid), time.monotonic()
    while True:
        time.sleep(poll)
        now = time.monotonic()
        cpu = cpu_seconds(pid)
        if cpu != last_cpu:
            last_cpu, last_busy = cpu, now
        elif now - last_busy >= quiet:
            return last_busy
        if now > deadline:
            raise TimeoutError(f"pid {pid} still busy after {timeout:g}s")
