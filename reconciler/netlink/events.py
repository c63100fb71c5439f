"""Netlink link events: "look again" signals for the reconcile loop.

A plain ``AF_NETLINK`` socket subscribed to ``RTMGRP_LINK`` (what
``ip monitor link`` listens to).  Only the interface name of each
``RTM_NEWLINK``/``RTM_DELLINK`` is decoded: the loop is level-triggered, so
an event only says "our device changed, diff again", never what to do.

If the kernel drops events (``ENOBUFS``: the socket's queue overflowed) the
callback is called with ``None``: something may have been missed, resync.

The socket must live in the node's network namespace.  ``setns(2)`` moves
only the calling thread, so the caller runs this on a thread of its own.
"""
from __future__ import annotations

import errno as E
import socket
import struct
import threading
from typing import Callable, Collection

from ..errors import NetlinkError
from .common import enter_netns

__all__ = ["watch_links"]

NETLINK_ROUTE = 0
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
