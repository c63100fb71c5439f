"""Peers whose lease would capture the underlay: node facts the lease checks need.

A lease is valid or not by the config alone (``leases._misfit``); whether it
is safe to route depends on this node too.  A peer subnet that contains our
PublicIP or overlaps one of the underlay's connected prefixes gets a route
``via <gw> dev flannel.1 onlink`` more specific than (or as specific as) the
connected route, so the underlay path to the peers themselves goes into the
tunnel and the whole node stops forwarding (a ``Network`` that overlaps the
underlay, the classic 10/8 mistake).  A PublicIP that cannot be a peer (inside
the overlay ``Network``, where our own routes would carry the encapsulated
packet back into the tunnel, or the broadcast address of an underlay prefix)
must not become an FDB destination either.

Why "a peer's PublicIP inside the subnet" needs no cross-lease check: every
lease subnet lies inside ``Network``, and a PublicIP inside ``Network`` is
skipped here, so no *usable* peer's PublicIP can lie inside a routed subnet.

Pure: the facts are values (docs/design.md, "Functional core").  The lease is
duck-typed (``subnet``, ``public_ip``) so that ``leases.py`` can import this
module.  IPv4 only: the IPv6 underlay is checked by nothing yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_interface
from socket import inet_aton
from typing import Any, Iterable

__all__ = ["UnderlayGuard"]


@dataclass(frozen=True, slots=True)
class UnderlayGuard:
    """This node's underlay facts: our PublicIP, the overlay Network and the underlay's IPv4 prefixes."""

    public_ip: str | None
    network: IPv4Network | None = None
    prefixes: tuple[IPv4Network, ...] = ()
    #: ``public_ip`` parsed once (every lease is checked against it).
    _me: IPv4Address | None = field(default=None, init=False, compare=False, repr=False)
    #: The same facts as integers, for the per-lease checks: every lease of a 5,000-node cluster
    #: passes here, and ``ipaddress`` comparisons cost more than the lease's own parse.
    _ints: tuple = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_me", IPv4Address(self.public_ip) if self.public_ip else None)
        net = self.network
        object.__setattr__(self, "_ints", (
            int(self._me) if self._me is not None else None,
            (int(net.network_address), int(net.netmask)) if net is not None else None,
            tuple((int(p.network_address), int(p.broadcast_address), p.prefixlen < 31) for p in self.prefixes),
        ))

    @classmethod
    def of(cls, public_ip: str | None, network: IPv4Network | None, prefixes: Iterable[str] = ()) -> "UnderlayGuard":
        """From the underlay's connected prefixes as the backends report them (``198.18.0.1/24``,
        IPv6 ones ignored)."""
        nets = []
        for p in prefixes:
            try:
                iface = ip_interface(p)
            except ValueError:
                continue
            if iface.version == 4 and iface.network.prefixlen < 32:
                nets.append(iface.network)
        return cls(public_ip, network, tuple(sorted(set(nets))))

    def peer_reason(self, lease: Any) -> str | None:
        """Why routing to ``lease`` as a peer would capture the underlay, or None.

        Our own lease (our PublicIP) is not a peer and is never refused here."""
        if self.public_ip is not None and lease.public_ip == self.public_ip:
            return None
        me, net, prefixes = self._ints
        subnet: IPv4Network = lease.subnet
        first = int(subnet.network_address)
        last = first | ((1 << (32 - subnet.prefixlen)) - 1)
        if me is not None and first <= me <= last:
            return f"underlay capture: subnet {subnet} contains our PublicIP {self.public_ip}"
        for (lo, hi, _), prefix in zip(prefixes, self.prefixes):
            if first <= hi and lo <= last:
                return f"underlay capture: subnet {subnet} overlaps the underlay prefix {prefix}"
        # The lease's PublicIP is a canonical dotted quad (the lease parser checked it).
        peer = int.from_bytes(inet_aton(lease.public_ip), "big")
        if net is not None and peer & net[1] == net[0]:
            return f"unusable PublicIP: {lease.public_ip} is inside the overlay Network {self.network}"
        for (_, bcast, has_broadcast), prefix in zip(prefixes, self.prefixes):
            if has_broadcast and peer == bcast:
                return (f"unusable PublicIP: {lease.public_ip} is the broadcast address of the underlay "
                        f"prefix {prefix}")
        return None
