"""flannel-reconciler: a declarative node agent for Flannel's VXLAN overlay.

The public surface of the pure core: values and the functions between them.
The shell (``netlink``, ``etcd``, ``daemon``, ``cli``) is imported from its
own modules so that importing the core never loads pyroute2 or grpc.
"""
from .config import NetworkConfig, parse_network_config
from .desired import NodeParams, desired_state
from .errors import ConfigError, EtcdError, LeaseError, NetlinkError, ReconcilerError
from .leases import Lease, RawKV, Skipped, encode_lease_value, parse_lease, validate_leases
from .model import Address, Fdb, KernelState, Link, Neigh, Route
from .ownership import FlannelOwnership
from .plan import Change, Conflict, OpResult, Plan, make_plan
from .reconcile import Cycle, compute_cycle

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
        from .version import version

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
