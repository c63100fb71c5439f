"""The netlink seam: one narrow interface every kernel backend implements.

Implementations:

* ``reconciler.kernel.netlink.reference.PyrouteBackend`` -- pyroute2, the reference
  (its messages are built in ``pyroute_msgs.py``; these two are the only
  modules that import pyroute2).
* ``tests/model_kernel.ModelKernel`` -- an in-memory kernel with netlink
  semantics (EEXIST, ENOENT/ESRCH, replace) and named faults, for the tests.
* ``reconciler.kernel.netlink.batched.BatchedBackend`` -- raw rtnetlink with
  batched requests and per-operation results; its dump decoders run in
  Cython (``_fastpath``) when built, in pure Python (``wire.py``, which
  re-exports ``wire_decode.py``) otherwise, with identical results.

The contract, which ``tests/`` checks for every backend:

``dump(devices, networks=())``
    Return a ``KernelState`` with: every link named in ``devices`` that
    exists (with vxlan attributes for vxlan links); the addresses on those
    links; every unicast route of the main table (IPv4 and IPv6) whose
    ``dev`` is one of ``devices``, *or* whose protocol is
    ``RTPROT_RECONCILER``, *or* whose destination lies inside one of the
    ``networks`` (CIDR strings; routes carry their ``protocol``, so foreign
    routes at the keys we want can be recognised and left alone); the
    ``NUD_PERMANENT`` neighbours and the ``NTF_SELF`` permanent FDB
    entries on those links; every nexthop object of the namespace (a group
    or blackhole as its id alone, gateway and device None), so that one
    holding an id we want is seen and left alone.  A route through a
    nexthop carries its ``nhid``.  IPv6 link-local addresses and routes
    (fe80::/64) are left out.  Ownership (which of these we may change) is
    decided afterwards by ``reconciler.core.ownership``, not here.  A dump the
    kernel flags as interrupted is retried and never returned half-done;
    after a few tries ``DumpInterrupted`` is raised.

``apply(changes)``
    Carry out the changes in the order given and return one ``OpResult``
    per change, in the same order.  A failing change does not stop the
    others.  ``create`` and ``update`` use replace semantics
    (``NLM_F_CREATE|NLM_F_REPLACE``); a ``delete`` of something already
    gone (ENOENT, ESRCH, ENODEV) succeeds.  A link ``update`` changes MTU,
    MAC and admin state in place; a link ``create`` makes a new device.
    Routes are written with protocol ``RTPROT_RECONCILER``.  A route with
    an ``nhid`` is written and deleted by destination, metric and nhid alone
    (no gateway, no device); a nexthop is written with ``replace`` and
    deleted by id (the kernel deletes the routes through it too).

``underlay(spec)``
    Describe the underlay interface: ``spec`` is a name, an IPv4 address,
    or ``None`` for the interface of the default route.  Raises
    ``NetlinkError`` when there is no such interface.

``underlay_v6(underlay, public_ipv6=None)`` (optional; dual stack)
    The same ``Underlay`` with ``address6`` and ``prefixes6`` filled in
    from the interface's IPv6 addresses.  Raises ``NetlinkError`` when it
    has no usable one and ``public_ipv6`` is not given.

``sysctl(name)``, ``all_links()`` (optional; the health conditions, ``core/health.py``)
    A sysctl's value inside the namespace (None when absent), and every
    link as a ``Link``: what ``kernel/facts.py`` reads besides the dump.

``close()``
    Release sockets.  Backends are context managers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Protocol, Sequence, runtime_checkable

from reconciler.core.model import KernelState
from reconciler.core.plan import Change, OpResult

__all__ = ["NetlinkBackend", "Underlay"]


@dataclass(frozen=True, slots=True)
class Underlay:
    """The node's external interface: what VXLAN packets leave through."""

    name: str
    address: str            # first usable IPv4 (global, permanent preferred)
    mtu: int
    prefixes: tuple[str, ...] = ()   # the connected IPv4 prefixes, for the DirectRouting on-link test
    #: Dual stack (``underlay_v6``): the interface's first usable IPv6 address
    #: (flanneld's preference) and its connected IPv6 prefixes.
    address6: str | None = None
    prefixes6: tuple[str, ...] = ()
    #: Every IPv4 address it holds (the health check: is our ``local`` still one of them?).
    addresses: tuple[str, ...] = ()


@runtime_checkable
class NetlinkBackend(Protocol):
    def dump(self, devices: Collection[str], networks: Collection[str] = ()) -> KernelState: ...

    def apply(self, changes: Sequence[Change]) -> list[OpResult]: ...

    def underlay(self, spec: str | None) -> Underlay: ...

    def close(self) -> None: ...
