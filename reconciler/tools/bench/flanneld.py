"""flanneld's own lease-event handling, re-enacted: the per-event floor a peer achieves.

``python -m reconciler.tools.bench.flanneld --etcd-endpoints URL --netns NS --stats FILE``

What flanneld's VXLAN backend does per lease event (docs/benchmarks.md,
"The flanneld re-enactment"), and nothing more:

* at start, one range read of ``<prefix>/subnets/`` and an add per lease
  (without flanneld's per-key ``TimeToLive`` calls: only the adds are timed);
* per PUT: one etcd ``TimeToLive`` call for the key's lease (flanneld makes it
  to learn the expiry), then three netlink writes, each its own request
  answered by its own ACK, in flanneld's order: ``neigh replace`` (gateway ->
  VtepMAC, permanent), ``fdb replace`` (VtepMAC -> PublicIP, self permanent),
  ``route replace`` (subnet via gateway onlink);
* per DELETE: the same three as deletions, with the attributes remembered
  from the last PUT (a DELETE carries no value);
* never a dump, never a diff: the kernel is assumed to be what the events made it.

The netlink requests are built here with ``struct``, independently of the
agent's backends (it is their baseline), and sent one at a time like
vishvananda/netlink does.  On SIGTERM it writes ``{"events", "writes",
"errors", "install_seconds"}`` to ``--stats`` and exits 0.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading
import time

from reconciler.kernel.netlink.common import in_netns, netns_path

__all__ = ["NetlinkWriter", "main"]

# rtnetlink.h / neighbour.h
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NLMSG_ERROR = 2
NUD_PERMANENT, NTF_SELF, RTN_UNICAST, RTNH_F_ONLINK = 0x80, 0x02, 1, 0x4
RTPROT_BOOT, RT_TABLE_MAIN, RT_SCOPE_UNIVERSE = 3, 254, 0
NDA_DST, NDA_LLADDR = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
AF_INET, AF_BRIDGE = 2, 7


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


class NetlinkWriter:
    """One rtnetlink socket in a namespace; every write waits for its own ACK."""

    def __init__(self, ns: str, dev: str = "flannel.1") -> None:
        def open_socket():
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
            s.bind((0, 0))
            return s, socket.if_nametoindex(dev)

        self.sock, self.ifindex = in_netns(netns_path(ns), open_socket)
        self.seq = 0
        self.writes = 0
        self.errors = 0

    def close(self) -> None:
        self.sock.close()

    def _request(self, kind: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.writes += 1
        msg = struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + body
        self.sock.send(msg)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _f, seq, _pid = struct.unpack_from("=IHHII", data, off)
                if mtype == NLMSG_ERROR and seq == self.seq:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        self.errors += 1
                    return err
                off += (length + 3) & ~3

    # ``ip neigh replace GW lladdr MAC dev flannel.1 nud permanent`` / ``ip neigh del GW dev flannel.1``
    def neigh(self, ip: str, mac: str | None, delete: bool = False) -> int:
        body = struct.pack("=BxxxiHBB", AF_INET, self.ifindex, 0 if delete else NUD_PERMANENT, 0, RTN_UNICAST)
        body += _attr(NDA_DST, socket.inet_aton(ip))
        if not delete:
            body += _attr(NDA_LLADDR, _mac(mac))
        flags = 0 if delete else NLM_F_CREATE | NLM_F_REPLACE
        return self._request(RTM_DELNEIGH if delete else RTM_NEWNEIGH, flags, body)

    # ``bridge fdb replace MAC dev flannel.1 dst IP self permanent`` / ``bridge fdb del MAC dev flannel.1 dst IP self``
    def fdb(self, mac: str, dst: str, delete: bool = False) -> int:
        body = struct.pack("=BxxxiHBB", AF_BRIDGE, self.ifindex, 0 if delete else NUD_PERMANENT, NTF_SELF, 0)
        body += _attr(NDA_LLADDR, _mac(mac)) + _attr(NDA_DST, socket.inet_aton(dst))
        flags = 0 if delete else NLM_F_CREATE | NLM_F_REPLACE
        return self._request(RTM_DELNEIGH if delete else RTM_NEWNEIGH, flags, body)

    # ``ip route replace SUBNET via GW dev flannel.1 onlink`` / ``ip route del SUBNET via GW dev flannel.1``
    def route(self, dst: str, prefixlen: int, gateway: str, delete: bool = False) -> int:
        body = struct.pack("=BBBBBBBBI", AF_INET, prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK)
        body += _attr(RTA_DST, socket.inet_aton(dst)) + _attr(RTA_GATEWAY, socket.inet_aton(gateway))
        body += _attr(RTA_OIF, struct.pack("=I", self.ifindex))
        flags = 0 if delete else NLM_F_CREATE | NLM_F_REPLACE
        return self._request(RTM_DELROUTE if delete else RTM_NEWROUTE, flags, body)


class Reenactment:
    """flanneld's event loop over one writer: remembered leases, three writes per event."""

    def __init__(self, writer: NetlinkWriter) -> None:
        self.w = writer
        self.known: dict[str, tuple[str, int, str, str]] = {}   # key -> (net, len, mac, public ip)
        self.events = 0

    def added(self, key: str, lease) -> None:
        net, plen = str(lease.subnet.network_address), lease.subnet.prefixlen
        self.w.neigh(net, lease.vtep_mac)
        self.w.fdb(lease.vtep_mac, lease.public_ip)
        self.w.route(net, plen, net)
        self.known[key] = (net, plen, lease.vtep_mac, lease.public_ip)

    def removed(self, key: str) -> None:
        attrs = self.known.pop(key, None)
        if attrs is None:       # never seen: flanneld ignores it ("BackendType" empty)
            return
        net, plen, mac, public_ip = attrs
        self.w.neigh(net, None, delete=True)
        self.w.fdb(mac, public_ip, delete=True)
        self.w.route(net, plen, net, delete=True)


def main(argv=None) -> int:
    from reconciler.core.errors import ReconcilerError
    from reconciler.etcd.store import EtcdStore
    from reconciler.core.leases import parse_lease

    p = argparse.ArgumentParser(prog="python -m reconciler.tools.bench.flanneld")
    p.add_argument("--etcd-endpoints", required=True)
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--netns", required=True)
    p.add_argument("--stats", required=True, help="write the counters here on exit (JSON)")
    p.add_argument("--ready-file", help="created once the start-up adds are done")
    args = p.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    writer = NetlinkWriter(args.netns)
    flannel = Reenactment(writer)
    stats = {"events": 0, "writes": 0, "errors": 0, "install_seconds": None, "install_writes": 0}
    try:
        with EtcdStore(args.etcd_endpoints.split(","), prefix=args.etcd_prefix) as store:
            base = store.subnets_prefix
            t0 = time.monotonic()
            snap = store.snapshot()
            for kv in snap.kvs:
                if kv.key.startswith(base):
                    try:
                        flannel.added(kv.key, parse_lease(kv.key[len(base):], kv.value, kv.lease))
                    except ReconcilerError:
                        continue
            stats["install_seconds"] = time.monotonic() - t0
            stats["install_writes"] = writer.writes
            if args.ready_file:
                open(args.ready_file, "w").close()
            for ev in store.watch(snap.revision + 1, stop):
                stats["events"] += 1
                if ev.type == "put":
                    try:
                        lease = parse_lease(ev.kv.key[len(base):], ev.kv.value, ev.kv.lease)
                    except ReconcilerError:
                        continue
                    store.time_to_live(ev.kv.lease)    # flanneld's per-PUT expiry lookup (also for lease 0)
                    flannel.added(ev.kv.key, lease)
                else:
                    flannel.removed(ev.kv.key)
    except ReconcilerError as exc:
        print(f"error: flanneld re-enactment: {exc}", file=sys.stderr)
        return 1
    finally:
        stats["writes"], stats["errors"] = writer.writes, writer.errors
        with open(args.stats, "w") as f:
            json.dump(stats, f)
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
