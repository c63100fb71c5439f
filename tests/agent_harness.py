"""An Agent whose cycles are driven by hand, without etcd: for the incremental tests and benchmark.

``offline_agent`` gives an agent with its reconcile state prepared (``Agent.prepare``);
the caller queues lease events and kernel notifications as the watch and the netlink
monitor would (``Agent.queue_lease_event``, ``queue_kernel_events``) and calls ``agent.cycle``.
"""
from __future__ import annotations

import re

from reconciler.core.config import NetworkConfig
from reconciler.agent.daemon import Agent, AgentOptions
from reconciler.core.desired import NodeParams
from reconciler.core.leases import RawKV

PREFIX = "/coreos.com/network"


class OfflineStore:
    """The little of ``EtcdStore`` a cycle touches: the prefix.  (A cycle makes no etcd call:
    whether it may delete depends on when etcd last answered, see ``offline_agent``.)"""

    prefix = PREFIX
    subnets_prefix = PREFIX + "/subnets/"


def offline_agent(backend, config: NetworkConfig, node: NodeParams, subnet_file: str) -> Agent:
    """An agent whose etcd has always just answered (its clock stands still at the moment of
    the last answer), so a deletion is trusted as soon as it is planned."""
    agent = Agent(OfflineStore(), backend, AgentOptions(subnet_file=subnet_file), clock=lambda: 0.0)
    agent.prepare(config, node)
    return agent


def queue_listing(agent: Agent, kvs: list[RawKV], revision: int = 0) -> None:
    """A complete lease listing, as the watch thread queues it after start-up or a compaction."""
    agent.queue_listing(kvs, revision)


def cycles_done(metrics_text: str, trigger: str = "resync") -> int:
    """How many cycles an agent's ``/metrics`` text counts whose triggers include ``trigger``:
    what a test waits on instead of sleeping through "several resyncs"."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("flannel_reconciler_cycles_total{"):
            series, _, value = line.rpartition(" ")
            m = re.search(r'trigger="([^"]*)"', series)
            if m and trigger in m.group(1).split("+"):
                total += float(value)
    return int(total)
