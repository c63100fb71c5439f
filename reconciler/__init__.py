"""flannel-reconciler: a declarative node agent for Flannel's VXLAN overlay.

The public surface of the pure core: values and the functions between them.
The shell (``netlink``, ``etcd``, ``daemon``, ``cli``) is imported from its
own modules so that importing the core never loads pyroute2 or grpc.
"""
from reconciler.core.config import NetworkConfig, parse_network_config
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.errors import ConfigError, EtcdError, LeaseError, NetlinkError, ReconcilerError
from reconciler.core.leases import Lease, RawKV, Skipped, encode_lease_value, parse_lease, validate_leases
from reconciler.core.model import Address, Fdb, KernelState, Link, Neigh, Route
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import Change, Conflict, OpResult, Plan, make_plan
from reconciler.core.reconcile import Cycle, compute_cycle

__all__ = [
    "Address",
    "Change",
    "ConfigError",
    "Conflict",
    "Cycle",
    "EtcdError",
    "Fdb",
    "FlannelOwnership",
    "KernelState",
    "Lease",
    "LeaseError",
    "Link",
    "Neigh",
    "NetlinkError",
    "NetworkConfig",
    "NodeParams",
    "OpResult",
    "Plan",
    "RawKV",
    "ReconcilerError",
    "Route",
    "Skipped",
    "compute_cycle",
    "desired_state",
    "encode_lease_value",
    "make_plan",
    "parse_lease",
    "parse_network_config",
    "validate_leases",
]


def __getattr__(name: str):
    # __version__ is computed on first use (reconciler/version.py), so importing the core stays cheap.
    if name == "__version__":
        from reconciler.version import version

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
