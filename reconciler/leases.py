"""Subnet leases as flanneld writes them under ``<prefix>/subnets/``.

Keys, values and their exact bytes follow ../shared/flannel-interop.md
sections 1 and 3.  Everything here is pure: the same parser serves the
``--leases-file`` snapshot and the live etcd client.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

__all__ = [
    "Lease",
    "LeaseSnapshot",
    "RawKV",
    "Skipped",
    "encode_lease_value",
    "parse_lease",
    "parse_snapshot",
    "parse_subnet_key",
    "subnet_key",
    "validate_leases",
]


@dataclass(frozen=True, slots=True)
class RawKV:
    """One etcd key-value as read: the full key, the raw value string, and the etcd lease id (0 = none)."""

    key: str
    value: str
    lease: int = 0
    mod_revision: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A parsed, individually valid lease.

    ``key`` is the subnet key (``10.244.1.0-24``, without the prefix).
    ``etcd_lease`` 0 means a reservation (no TTL).
    """

    key: str
    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    public_ip: str
    public_ipv6: str | None
    backend_type: str
    vni: int | None
    vtep_mac: str | None
    v6_vni: int | None = None
    v6_vtep_mac: str | None = None
    etcd_lease: int = 0

    @property
    def is_reservation(self) -> bool:
        return self.etcd_lease == 0


@dataclass(frozen=True, slots=True)
class Skipped:
    """A lease left out of the desired state, with the etcd key and why."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseSnapshot:
    prefix: str
    revision: int
    kvs: tuple[RawKV, ...]
