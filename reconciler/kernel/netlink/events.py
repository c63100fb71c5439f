"""Netlink events: the kernel monitor (``watch_kernel``) and link "look again" signals (``watch_links``).

``watch_kernel`` listens on one raw rtnetlink socket to links, addresses,
routes, neighbours (FDB entries are ``AF_BRIDGE`` neighbours) and nexthop
objects and hands
the caller typed ``KernelEvent`` values equal to what a dump would show; the
decoding and filtering are ``kernel_events.EventTracker``'s (pure), this
module is the socket, the namespace and the dumps around it.  See
``docs/netlink-events.md``.

``watch_links`` is the older, smaller signal: a plain ``AF_NETLINK``
socket subscribed to ``RTMGRP_LINK`` (what ``ip monitor link`` listens to).  Only the interface name of each
``RTM_NEWLINK``/``RTM_DELLINK`` is decoded: the loop is level-triggered, so
an event only says "our device changed, diff again", never what to do.

If the kernel drops events (``ENOBUFS``: the socket's queue overflowed) the
callback is called with ``None``: something may have been missed, resync.

The socket must live in the node's network namespace.  ``setns(2)`` moves
only the calling thread, so the caller runs this on a thread of its own.
"""
from __future__ import annotations

import errno as E
import select
import socket
import struct
import threading
from typing import Callable, Collection, ContextManager, Iterable, Protocol

from reconciler.core.errors import DumpInterrupted, NetlinkError
from reconciler.core.model import KernelObject, KernelState
from reconciler.kernel.netlink import wire
from reconciler.kernel.netlink.common import enter_netns
from reconciler.kernel.netlink.kernel_events import RTMGRP_ALL, RTNLGRP_NEXTHOP, EventTracker, KernelEvent

__all__ = ["Dumper", "KernelEvent", "watch_kernel", "watch_links"]


class Dumper(Protocol):
    """What the monitor needs of a backend to seed itself and re-check: its dump, and the
    link messages that dump read (every link, for the ifindex map)."""

    def dump(self, devices: Collection[str], networks: Collection[str] = ()) -> KernelState: ...

    def links(self) -> Iterable[wire.LinkMsg]: ...

NETLINK_ROUTE = 0
NETLINK_ADD_MEMBERSHIP = 1
RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_IFNAME = 3
_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")    # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")           # len, type


def link_names(buf: bytes) -> list[str | None]:
    """The interface names of the link messages in one netlink datagram."""
    names: list[str | None] = []
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size:
            break
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            name = None
            a = off + _NLMSGHDR.size + _IFINFOMSG.size
            end = off + length
            while a + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(buf, a)
                if alen < _RTATTR.size:
                    break
                if atype == IFLA_IFNAME:
                    name = buf[a + _RTATTR.size:a + alen].split(b"\0", 1)[0].decode(errors="replace")
                    break
                a += (alen + 3) & ~3
            names.append(name)
        off += (length + 3) & ~3
    return names


def watch_links(netns_path: str | None, devices: Collection[str], callback: Callable[[str | None], None],
                stop: threading.Event, poll: float = 0.5) -> None:
    """Call ``callback(name)`` for every link event on ``devices`` until ``stop`` is set.

    ``callback(None)`` means events were lost.  Runs on the calling thread,
    which it moves into ``netns_path`` first (when given).
    """
    if netns_path is not None:
        enter_netns(netns_path)
    devices = set(devices)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    except OSError as exc:
        raise NetlinkError(exc.errno, "cannot open a netlink socket for link events") from exc
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, RTMGRP_LINK))
        sock.settimeout(poll)
        while not stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == E.ENOBUFS:
                    callback(None)
                    continue
                raise NetlinkError(exc.errno, "link event socket failed") from exc
            for name in link_names(data):
                if name in devices:
                    callback(name)


#: The monitor's receive buffer, forced past ``net.core.rmem_max`` when root:
#: a link deletion with 5,000 entries on it is 5,000 notifications at once.
RCVBUF_BYTES = 16 * 1024 * 1024
SO_RCVBUFFORCE = 33
#: How many queued datagrams one callback may carry (bounds the latency of a batch).
BATCH_DATAGRAMS = 256


def _open_monitor() -> socket.socket:
    """A raw rtnetlink socket bound to every group the monitor hears; on the calling thread's namespace."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    except OSError as exc:
        raise NetlinkError(exc.errno, "cannot open a netlink socket for kernel events") from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except PermissionError:                 # not root: as much as rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.bind((0, RTMGRP_ALL))
        # Groups past 32 have no bit in bind()'s mask; nexthop's is the 32nd, joined the same way.
        sock.setsockopt(wire.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_NEXTHOP)
    except OSError as exc:
        sock.close()
        raise NetlinkError(exc.errno, "cannot subscribe to kernel events") from exc
    return sock


def watch_kernel(netns_path: str | None, devices: Collection[str], networks: Collection[str],
                 callback: Callable[[list[KernelEvent] | None], None], stop: threading.Event,
                 ready: threading.Event | None = None, poll: float = 0.5, *, accelerate: bool = True,
                 open_dumper: Callable[[], ContextManager[Dumper]],
                 share: Callable[[KernelObject], KernelObject] | None = None) -> None:
    """Deliver the kernel's changes to what ``dump(devices, networks)`` shows, until ``stop`` is set.

    ``callback(events)``: the ``KernelEvent`` values of the datagrams read
    together, in kernel order (never an empty list).  ``callback(None)``:
    events were lost (``ENOBUFS``) or something changed that no event
    describes (a rename of one of our devices): resync from a full dump.
    ``ready`` is set once subscribed (and the tracker seeded): a dump taken
    after that misses nothing.  Runs on the calling thread, which it moves
    into ``netns_path`` first (when given).  ``accelerate``: the compiled
    decoders when built (identical values).  ``open_dumper()``: a backend
    opened in the calling thread's namespace (the backends hand in a
    ``BatchedBackend``).  ``share``: ``EventTracker``'s (an equal instance to keep
    instead of a decoded one).  ``NetlinkError`` when the socket fails.
    """
    if netns_path is not None:
        enter_netns(netns_path)
    tracker = EventTracker(devices, networks, accelerate, share)
    sock = _open_monitor()
    # The dumps (seed and re-checks) go over a socket of their own, opened
    # on this thread, so in this namespace; never over the subscribed one.
    with sock, open_dumper() as dumper:

        def dump():
            return dumper.dump(tracker.devices, [str(n) for n in tracker.nets])

        def seed() -> None:
            state = dump()
            # The link dump behind that state (every link, for the ifindex map).
            tracker.seed(state, dumper.links())

        seed()
        if ready is not None:
            ready.set()
        sock.setblocking(False)
        waiter = select.poll()
        waiter.register(sock, select.POLLIN)
        while not stop.is_set():
            if not waiter.poll(poll * 1000):
                continue
            datagrams: list[bytes] = []
            try:
                while len(datagrams) < BATCH_DATAGRAMS:
                    datagrams.append(sock.recv(1 << 16))
            except BlockingIOError:
                pass                            # drained what was queued
            except OSError as exc:
                if exc.errno != E.ENOBUFS:
                    raise NetlinkError(exc.errno, "kernel event socket failed") from exc
                callback(None)                  # the kernel dropped some: what we read is not enough
                seed()
                continue
            if not datagrams:
                continue
            events: list[KernelEvent] = []
            resync = False
            try:
                for data in datagrams:
                    got, again = tracker.feed(data, dump)
                    events += got
                    resync = resync or again
            except (wire.DecodeError, DumpInterrupted):
                # Broken framing, or a re-check dump that kept being
                # interrupted: what follows cannot be trusted, resync.
                resync = True
            if events:
                callback(events)
            if resync:
                callback(None)
                seed()
