"""The namespace helpers, now in ``reconciler.tools.lab.netns`` (the demo uses them too).

Re-exported here so the tests keep importing ``tests.netns``; the tests'
names are ``frt-<pid>-<n>`` (``TEST_PREFIX``, the default).
"""
from reconciler.tools.lab.netns import (  # noqa: F401
    GATEWAY,
    TEST_PREFIX,
    CommandFailed,
    Node,
    UnderlayNet,
    bridge_json,
    delete_netns,
    ip_json,
    netns,
    netns_exists,
    run,
    underlay,
    unique_name,
)

__all__ = [
    "GATEWAY",
    "TEST_PREFIX",
    "CommandFailed",
    "Node",
    "UnderlayNet",
    "bridge_json",
    "delete_netns",
    "ip_json",
    "netns",
    "netns_exists",
    "run",
    "underlay",
    "unique_name",
]
