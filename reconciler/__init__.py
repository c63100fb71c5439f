"""flannel-reconciler: a declarative node agent for Flannel's VXLAN overlay.

The public surface of the pure core: values and the functions between them.
The shell (``netlink``, ``etcd``, ``daemon``, ``cli``) is imported from its
own modules so that importing the core never loads pyroute2 or grpc.
"""
import typing as _typing

from reconciler.core.lazy import lazy_getattr as _lazy_getattr

if _typing.TYPE_CHECKING:  # the names below, for the type checker; at run time they load on first use
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


#: Each public name and the module it comes from.  Loaded on first use, so that a
#: command that needs none of the core (``--version``) does not pay for importing it.
_SOURCES = {
    "Address": "reconciler.core.model",
    "Change": "reconciler.core.plan",
    "ConfigError": "reconciler.core.errors",
    "Conflict": "reconciler.core.plan",
    "Cycle": "reconciler.core.reconcile",
    "EtcdError": "reconciler.core.errors",
    "Fdb": "reconciler.core.model",
    "FlannelOwnership": "reconciler.core.ownership",
    "KernelState": "reconciler.core.model",
    "Lease": "reconciler.core.leases",
    "LeaseError": "reconciler.core.errors",
    "Link": "reconciler.core.model",
    "Neigh": "reconciler.core.model",
    "NetlinkError": "reconciler.core.errors",
    "NetworkConfig": "reconciler.core.config",
    "NodeParams": "reconciler.core.desired",
    "OpResult": "reconciler.core.plan",
    "Plan": "reconciler.core.plan",
    "RawKV": "reconciler.core.leases",
    "ReconcilerError": "reconciler.core.errors",
    "Route": "reconciler.core.model",
    "Skipped": "reconciler.core.leases",
    "compute_cycle": "reconciler.core.reconcile",
    "desired_state": "reconciler.core.desired",
    "encode_lease_value": "reconciler.core.leases",
    "make_plan": "reconciler.core.plan",
    "parse_lease": "reconciler.core.leases",
    "parse_network_config": "reconciler.core.config",
    "validate_leases": "reconciler.core.leases",
}


_lazy = _lazy_getattr(__name__, globals(), _SOURCES)


def __getattr__(name: str):
    # __version__ is computed on first use (reconciler/version.py), so importing the core stays cheap.
    if name == "__version__":
        from reconciler.version import version

        return version()
    return _lazy(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
