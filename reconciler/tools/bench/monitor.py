"""A netlink monitor inside one namespace: when did the kernel *say* it changed?

Latencies in the benchmark end at a kernel notification, not at a poll of
``ip``: the monitor joins the rtnetlink multicast groups for links,
neighbours (which also carry the VXLAN device's FDB entries, as
``AF_BRIDGE`` neighbours) and IPv4 routes, and timestamps every message as
it is read (``time.monotonic``, the clock the scenarios use for the etcd
put).  The decoder is deliberately its own few lines of ``struct``: it must
not share code with the backends it measures.

Each message becomes a ``Signal``, a small tuple in kernel words::

    ("route", "new", "100.64.5.0/24")           RTM_NEWROUTE, main table
    ("neigh", "new", "100.64.5.0", "0a:58:..")   RTM_NEWNEIGH, AF_INET
    ("fdb", "new", "0a:58:..", "198.18.1.5")     RTM_NEWNEIGH, AF_BRIDGE
    ("link", "new", "flannel.1", 1450)           RTM_NEWLINK: name and MTU

Deletions carry only their identity (``("route", "del", dst)``,
``("neigh", "del", ip)``, ``("fdb", "del", mac)``) so that a waiter does not
need to know the attributes of what went away.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

from reconciler.kernel.netlink.common import in_netns, netns_path

__all__ = ["NetlinkMonitor", "Signal", "decode"]

Signal = tuple

# rtnetlink.h / if_link.h / neighbour.h / rtnetlink.h (kernel spelling)
NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x40
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME, IFLA_MTU = 3, 4
NDA_DST, NDA_LLADDR = 1, 2
RTA_DST, RTA_TABLE = 1, 15
RT_TABLE_MAIN = 254
AF_INET, AF_BRIDGE = 2, 7
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
SO_RCVBUFFORCE = 33
#: A cold start of 20,000 nodes is about 60,000 notifications in a few seconds.
RCVBUF = 64 << 20

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        length, kind = _RTATTR.unpack_from(buf, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def decode(buf: bytes) -> list[Signal]:
    """The signals in one datagram from the multicast socket (unknown messages are dropped)."""
    out: list[Signal] = []
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size:
            break
        body, end = off + _NLMSGHDR.size, off + length
        op = "new" if kind in (RTM_NEWLINK, RTM_NEWROUTE, RTM_NEWNEIGH) else "del"
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            a = _attrs(buf, body + _IFINFOMSG.size, end)
            if IFLA_IFNAME in a:
                name = a[IFLA_IFNAME].rstrip(b"\0").decode(errors="replace")
                mtu = struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else None
                out.append(("link", op, name, mtu))
        elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            family = buf[body]
            a = _attrs(buf, body + _NDMSG.size, end)
            if family == AF_BRIDGE and NDA_LLADDR in a:
                mac = _mac(a[NDA_LLADDR])
                if op == "new":
                    out.append(("fdb", op, mac, _ip(a[NDA_DST]) if NDA_DST in a else None))
                else:
                    out.append(("fdb", op, mac))
            elif family == AF_INET and NDA_DST in a:
                ip = _ip(a[NDA_DST])
                if op == "new":
                    out.append(("neigh", op, ip, _mac(a[NDA_LLADDR]) if NDA_LLADDR in a else None))
                else:
                    out.append(("neigh", op, ip))
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE):
            family, dst_len, _src_len, _tos, table = _RTMSG.unpack_from(buf, body)[:5]
            a = _attrs(buf, body + _RTMSG.size, end)
            if RTA_TABLE in a:
                table = struct.unpack("=I", a[RTA_TABLE])[0]
            if family == AF_INET and table == RT_TABLE_MAIN and RTA_DST in a:
                out.append(("route", op, f"{_ip(a[RTA_DST])}/{dst_len}"))
        off += (length + 3) & ~3
    return out


@dataclass
class _Log:
    """What the reader thread saw: (monotonic time, signal), in order."""

    events: list[tuple[float, Signal]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    overruns: int = 0


class NetlinkMonitor:
    """Listen to one namespace's link, neighbour, FDB and IPv4 route notifications.

    ::

        with NetlinkMonitor(ns) as mon:
            mark = mon.mark()
            ...                                       # make a change somewhere
            t = mon.wait_all({("route", "new", "100.64.5.0/24")}, mark, timeout=10)

    ``overruns`` counts ENOBUFS (the kernel dropped notifications because
    we read too slowly); a result measured across an overrun is reported as
    such by the scenarios, never trusted silently.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._log = _Log()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    # --------------------------------------------------------------- lifecycle
    def start(self) -> "NetlinkMonitor":
        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:   # not root: the ordinary limit
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
            return s

        # The socket belongs to the namespace it was opened in, whichever
        # thread reads it later.
        self._sock = in_netns(netns_path(self.ns), open_socket)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, name=f"nlmon-{self.ns}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "NetlinkMonitor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        sock, log = self._sock, self._log
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    with log.cond:
                        log.overruns += 1
                    continue
                if self._stop.is_set():
                    return
                raise
            now = time.monotonic()
            signals = decode(data)
            if signals:
                with log.cond:
                    log.events.extend((now, s) for s in signals)
                    log.cond.notify_all()

    # ----------------------------------------------------------------- queries
    @property
    def overruns(self) -> int:
        return self._log.overruns

    def mark(self) -> int:
        """A position in the event log: later queries look only at what came after it."""
        with self._log.cond:
            return len(self._log.events)

    def events(self, since: int = 0) -> list[tuple[float, Signal]]:
        with self._log.cond:
            return self._log.events[since:]

    def wait_all(self, wanted: Iterable[Signal], since: int, timeout: float) -> float | None:
        """Block until every signal in ``wanted`` has been seen after ``since``.

        Returns the time the last of them arrived (each counted at its first
        arrival), or None when ``timeout`` passed first.
        """
        pending = set(wanted)
        latest = 0.0
        pos = since
        deadline = time.monotonic() + timeout
        with self._log.cond:
            while True:
                events = self._log.events
                for t, sig in events[pos:]:
                    if sig in pending:
                        pending.discard(sig)
                        latest = max(latest, t)
                pos = len(events)
                if not pending:
                    return latest
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._log.cond.wait(min(left, 0.5))

    def count(self, since: int, kinds: Iterable[str] = ("route", "neigh", "fdb")) -> int:
        """How many notifications of these kinds arrived after ``since``."""
        kinds = set(kinds)
        return sum(1 for _, s in self.events(since) if s[0] in kinds)


def _selftest() -> None:  # pragma: no cover - manual check: python -m reconciler.tools.bench.monitor NS
    import sys

    with NetlinkMonitor(sys.argv[1]) as mon:
        time.sleep(float(os.environ.get("SECONDS", "5")))
        for t, s in mon.events():
            print(f"{t:.6f} {s}")


if __name__ == "__main__":  # pragma: no cover
    _selftest()
