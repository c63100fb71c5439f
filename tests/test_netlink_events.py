"""Netlink events.

* ``watch_links``: the link-name decoder on crafted bytes, the watcher in a namespace;
* ``EventTracker`` (the pure half of ``watch_kernel``) on crafted notifications;
* the model kernel's events (replayed onto the old dump they give the new one);
* ``watch_kernel`` on the real kernel, both backends: changes made with iproute2
  behind its back arrive as events equal to the dump, foreign ones not at all.
"""
from __future__ import annotations

import errno
import itertools
import os
import struct
import threading
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.model import KernelState, Link, Neigh, Route
from reconciler.kernel.netlink import wire
from reconciler.kernel.netlink.events import RTM_DELLINK, RTM_NEWLINK, link_names
from reconciler.kernel.netlink.kernel_events import EventTracker, KernelEvent
from tests.conftest_fastpath import require_fastpath
from tests.model_kernel import ModelKernel, events_between, replay


def _link_msg(mtype: int, name: str | None) -> bytes:
    attrs = b""
    if name is not None:
        payload = name.encode() + b"\0"
        attrs = struct.pack("=HH", 4 + len(payload), 3) + payload
        attrs += b"\0" * ((4 - len(attrs) % 4) % 4)
    mtu = struct.pack("=HHI", 8, 4, 1450)  # IFLA_MTU, before the name
    body = struct.pack("=BxHiII", 0, 1, 7, 0, 0) + mtu + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def test_decoder_finds_names_in_a_multi_message_datagram():
    buf = _link_msg(RTM_NEWLINK, "flannel.1") + _link_msg(RTM_DELLINK, "cni0") + _link_msg(RTM_NEWLINK, None)
    assert link_names(buf) == ["flannel.1", "cni0", None]


def test_decoder_ignores_other_messages_and_truncation():
    other = struct.pack("=IHHII", 16, 20, 0, 0, 0)  # RTM_NEWADDR header only
    assert link_names(other + _link_msg(RTM_NEWLINK, "eth0")) == ["eth0"]
    assert link_names(b"\x03\x00") == []


def test_watcher_reports_changes_to_our_devices_only(netns):
    from reconciler.kernel.netlink.reference import PyrouteBackend
    from tests.netns import run

    seen: list = []
    stop = threading.Event()
    with PyrouteBackend(netns) as backend:
        t = threading.Thread(target=backend.watch_links, args=({"flannel.1"}, seen.append, stop), daemon=True)
        t.start()
        run(netns, "ip", "link", "add", "flannel.1", "type", "bridge")
        # The watcher binds asynchronously: keep making events (on ours and on
        # another device) until it has reported two, or a bound runs out.
        run(netns, "ip", "link", "add", "other0", "type", "bridge")
        deadline = time.monotonic() + 15
        mtu = 1400
        while len(seen) < 2 and time.monotonic() < deadline:
            mtu = 1300 if mtu == 1400 else 1400
            run(netns, "ip", "link", "set", "other0", "mtu", str(mtu))
            run(netns, "ip", "link", "set", "flannel.1", "mtu", str(mtu))
            time.sleep(0.1)
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()
    assert len(seen) >= 2 and set(seen) == {"flannel.1"}


# ============================================================ kernel events
# The pure tracker on crafted notifications (no root needed).  The messages
# are the wire encoders' requests: a notification has the same layout.

DEVICES = ("cni0", "flannel.1")
NETWORKS = ("100.64.0.0/10", "fd00:64::/48")
ETH0, FLANNEL, CNI0, OTHER = 2, 3, 4, 5
VXLAN = Link("flannel.1", "vxlan", mtu=1450, mac="0a:58:64:40:01:00", up=True, vni=1, local="198.18.0.1",
             port=8472, learning=False, gbp=False, underlay="eth0")
PEER_ROUTE = Route("100.64.2.0/24", "100.64.2.0", "flannel.1", True, 0, 73)
PEER_NEIGH = Neigh("flannel.1", "100.64.2.0", "0a:58:64:40:02:00")
NUD_REACHABLE, RTN_BLACKHOLE, RTN_UNREACHABLE = 0x02, 6, 7


def _retype(msg: bytes, mtype: int) -> bytes:
    return msg[:4] + struct.pack("=H", mtype) + msg[6:]


def _link(link: Link, index: int, mtype: int = 16) -> bytes:
    msg = bytearray(wire.encode_newlink(1, link, ETH0 if link.type == "vxlan" else None))
    struct.pack_into("=iI", msg, 20, index, 1 if link.up else 0)      # ifi_index, ifi_flags (IFF_UP)
    return _retype(bytes(msg), mtype)


def _neigh(neigh: Neigh, index: int, mtype: int = 28, state: int = 0x80) -> bytes:
    msg = bytearray(wire.encode_newneigh(1, neigh.ip, neigh.mac, index))
    struct.pack_into("=H", msg, 24, state)                            # ndm_state
    return _retype(bytes(msg), mtype)


def _route(route: Route, oif: int, mtype: int = 24, rtype: int = 1, table: int = 254) -> bytes:
    msg = bytearray(wire.encode_newroute(1, route, oif))
    msg[20], msg[21], msg[23] = table, route.protocol, rtype          # rtm_table, rtm_protocol, rtm_type
    return _retype(bytes(msg), mtype)


def _eth0_msg() -> wire.LinkMsg:
    return wire.decode_links(_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True), ETH0))[0]


def _tracker(accelerate: bool = False, state: KernelState | None = None) -> EventTracker:
    t = EventTracker(DEVICES, NETWORKS, accelerate)
    links = [_eth0_msg(), wire.decode_links(_link(VXLAN, FLANNEL))[0],
             wire.decode_links(_link(Link("cni0", "bridge", 1450, "02:00:00:00:b0:01", True), CNI0))[0],
             wire.decode_links(_link(Link("other0", "bridge", 1500, "02:00:00:00:b0:02", True), OTHER))[0]]
    t.seed(state if state is not None else KernelState([VXLAN, PEER_ROUTE, PEER_NEIGH]), links)
    return t


def test_tracker_reports_our_objects_with_dump_values(accelerate):
    t = _tracker(accelerate)
    neigh = Neigh("flannel.1", "100.64.3.0", "0a:58:64:40:03:00")
    buf = (_neigh(neigh, FLANNEL) + _route(replace(PEER_ROUTE, gateway="100.64.3.0"), FLANNEL)
           + _link(replace(VXLAN, mtu=1400), FLANNEL) + _neigh(PEER_NEIGH, FLANNEL, mtype=29))
    events, resync = t.feed(buf)
    assert events == [KernelEvent("set", neigh), KernelEvent("set", replace(PEER_ROUTE, gateway="100.64.3.0")),
                      KernelEvent("set", replace(VXLAN, mtu=1400)), KernelEvent("del", PEER_NEIGH)]
    assert not resync


def test_tracker_keeps_the_shared_instance_and_reports_the_decoded_value(accelerate):
    # The agent hands in its desired state's lookup: the tracker's believed entries are those
    # instances where equal (no copy per entry), while events carry the values as decoded,
    # a route's protocol included (ownership reads it).
    desired_route = replace(PEER_ROUTE, protocol=None)
    desired_neigh = Neigh("flannel.1", "100.64.3.0", "0a:58:64:40:03:00")
    desired = KernelState([desired_route, desired_neigh])
    t = EventTracker(DEVICES, NETWORKS, accelerate, share=desired.instance_of)
    t.seed(KernelState([VXLAN, replace(PEER_ROUTE), replace(PEER_NEIGH)]),
           [_eth0_msg(), wire.decode_links(_link(VXLAN, FLANNEL))[0]])
    assert t.routes[PEER_ROUTE.key] is desired_route
    assert t.neighs[PEER_NEIGH.key] == PEER_NEIGH and t.neighs[PEER_NEIGH.key] is not desired_neigh
    events, _ = t.feed(_neigh(desired_neigh, FLANNEL) + _route(PEER_ROUTE, FLANNEL))
    assert events == [KernelEvent("set", desired_neigh), KernelEvent("set", PEER_ROUTE)]
    assert events[0].obj is not desired_neigh and events[1].obj.protocol == PEER_ROUTE.protocol
    assert t.neighs[desired_neigh.key] is desired_neigh and t.routes[PEER_ROUTE.key] is desired_route
    # The keys hold the shared strings too, not the decoded ones.
    assert next(k for k in t.routes if k == PEER_ROUTE.key)[0] is desired_route.dst
    assert next(k for k in t.neighs if k == desired_neigh.key)[1] is desired_neigh.ip
    # Unequal values are kept as decoded.
    moved = replace(desired_neigh, mac="0a:58:64:40:03:01")
    t.feed(_neigh(moved, FLANNEL))
    assert t.neighs[moved.key] == moved


def test_tracker_drops_foreign_objects_early(accelerate):
    t = _tracker(accelerate)
    foreign = [
        _neigh(Neigh("other0", "100.64.1.9", "02:00:00:00:00:09"), OTHER),                 # other device
        _neigh(Neigh("cni0", "100.64.1.9", "02:00:00:00:00:09"), CNI0, state=NUD_REACHABLE),  # learned
        _route(Route("198.19.0.0/16", "198.18.0.9", "eth0", False, 0, 3), ETH0),          # outside, eth0
        _route(replace(PEER_ROUTE, dst="100.64.9.0/24"), FLANNEL, table=100),             # another table
        _link(Link("other0", "bridge", 1400, "02:00:00:00:b0:02", True), OTHER),          # another link
        wire.encode_newaddr(1, "198.18.1.1/24", ETH0),
    ]
    assert t.feed(b"".join(foreign)) == ([], False)


def test_a_learned_entry_replacing_ours_is_its_deletion(accelerate):
    t = _tracker(accelerate)
    learned = replace(PEER_NEIGH, mac="02:00:00:00:00:99")
    events, _ = t.feed(_neigh(learned, FLANNEL, state=NUD_REACHABLE))
    assert events == [KernelEvent("del", PEER_NEIGH)]
    assert t.feed(_neigh(learned, FLANNEL, state=NUD_REACHABLE)) == ([], False)   # reported once


def test_a_blackhole_replacing_our_route_is_seen_as_one(accelerate):
    # Dumps read blackhole routes (ours with -ip-blackhole-route, or a foreign one holding a key),
    # so the event says what now holds the key; the plan then repairs it or reports the conflict.
    t = _tracker(accelerate)
    hole = replace(PEER_ROUTE, gateway=None, onlink=False)
    events, _ = t.feed(_route(hole, FLANNEL, rtype=RTN_BLACKHOLE))
    assert events == [KernelEvent("set", replace(hole, type="blackhole"))]


def test_a_route_type_dumps_leave_out_replacing_ours_is_its_deletion(accelerate):
    t = _tracker(accelerate)
    events, _ = t.feed(_route(replace(PEER_ROUTE, gateway=None, onlink=False), FLANNEL, rtype=RTN_UNREACHABLE))
    assert events == [KernelEvent("del", PEER_ROUTE)]


def test_silently_flushed_ipv4_routes_are_found_by_a_recheck(accelerate):
    t = _tracker(accelerate)
    asked = []

    def recheck() -> KernelState:
        asked.append(1)
        return KernelState([replace(VXLAN, up=False)])      # what a dump shows after the flush

    events, _ = t.feed(_link(replace(VXLAN, up=False), FLANNEL), recheck)
    assert asked == [1]
    assert events == [KernelEvent("set", replace(VXLAN, up=False)), KernelEvent("del", PEER_ROUTE)]
    # Nothing believed on the device any more: the next down costs no dump.
    t.feed(_link(replace(VXLAN, up=False), FLANNEL), recheck)
    assert asked == [1]


def test_a_rename_of_our_device_asks_for_a_resync(accelerate):
    t = _tracker(accelerate)
    events, resync = t.feed(_link(replace(VXLAN, name="flannel.9", up=False), FLANNEL))
    assert resync
    assert [(e.op, e.obj.key) for e in events] == [("del", "flannel.1")]
    # A foreign device renamed: nothing to say.
    assert t.feed(_link(Link("other1", "bridge", 1500, "02:00:00:00:b0:02", True), OTHER)) == ([], False)


def test_a_recreated_device_gets_its_new_ifindex(accelerate):
    t = _tracker(accelerate)
    events, _ = t.feed(_link(VXLAN, FLANNEL, mtype=17) + _link(VXLAN, 9))
    assert events == [KernelEvent("del", VXLAN), KernelEvent("set", VXLAN)]
    assert t.ours == {9: "flannel.1", CNI0: "cni0"}
    neigh = Neigh("flannel.1", "100.64.3.0", "0a:58:64:40:03:00")
    assert t.feed(_neigh(neigh, 9)) == ([KernelEvent("set", neigh)], False)
    assert t.feed(_neigh(neigh, FLANNEL)) == ([], False)    # the old ifindex is nobody's


def test_broken_framing_is_a_decode_error():
    with pytest.raises(wire.DecodeError):
        _tracker().feed(_neigh(PEER_NEIGH, FLANNEL)[:-3])


# ------------------------------------------------------- the model kernel
def _model() -> ModelKernel:
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", "198.18.0.1/24")
    k.add_link(VXLAN)
    k.add_address("flannel.1", "100.64.1.0/32")
    k.add_link(Link("cni0", "bridge", 1450, "02:00:00:00:b0:01", True))
    k.add_address("cni0", "100.64.1.1/24")
    return k


def _drift_ops(k: ModelKernel):
    """Named changes somebody else (or apply) could make, each with its kernel side effects."""
    from reconciler.core.model import Address, Fdb
    from reconciler.core.plan import Change

    peer = lambda i: (Neigh("flannel.1", f"100.64.{i}.0", f"0a:58:64:40:{i:02x}:00"),  # noqa: E731
                      Fdb("flannel.1", f"0a:58:64:40:{i:02x}:00", f"198.18.0.{i}"),
                      Route(f"100.64.{i}.0/24", f"100.64.{i}.0", "flannel.1", True, 0, 73))
    return {
        "add_peer": lambda i: [k.add_neigh(peer(i)[0]), k.add_fdb(peer(i)[1]), k.add_route(peer(i)[2])],
        "apply_peer": lambda i: k.apply([Change("create", o) for o in peer(i)]),
        "del_route": lambda i: k.del_route(f"100.64.{i}.0/24"),
        "del_neigh": lambda i: k.del_neigh("flannel.1", f"100.64.{i}.0"),
        "learned_neigh": lambda i: k.add_neigh(replace(peer(i)[0], mac="02:00:00:00:00:99"), permanent=False),
        "del_fdb": lambda i: k.del_fdb("flannel.1", f"0a:58:64:40:{i:02x}:00"),
        "foreign_route": lambda i: k.add_route(Route(f"198.19.{i}.0/24", "198.18.0.9", "eth0", False, 0, 3)),
        "other_table": lambda i: k.add_route(peer(i)[2], table=100),
        "mtu": lambda i: k.set_link("flannel.1", mtu=1300 + i) if "flannel.1" in k.links else None,
        "mac": lambda i: k.set_link("flannel.1", mac=f"0a:58:64:40:99:{i:02x}") if "flannel.1" in k.links else None,
        "down": lambda i: k.set_link("flannel.1", up=False) if "flannel.1" in k.links else None,
        "up": lambda i: k.set_link("flannel.1", up=True) if "flannel.1" in k.links else None,
        "del_addr": lambda i: k.del_address("flannel.1", "100.64.1.0/32") if ("flannel.1", "100.64.1.0/32")
        in k.addresses else None,
        "del_cni_addr": lambda i: k.del_address("cni0", "100.64.1.1/24") if ("cni0", "100.64.1.1/24")
        in k.addresses else None,
        "remove_link": lambda i: k.remove_link("flannel.1") if "flannel.1" in k.links else None,
        "recreate": lambda i: None if "flannel.1" in k.links else [k.add_link(VXLAN),
                                                                   k.add_address("flannel.1", "100.64.1.0/32")],
        "apply_delete_link": lambda i: k.apply([Change("delete", VXLAN)]),
        "apply_address": lambda i: k.apply([Change("create", Address("cni0", f"100.64.1.{i}/24"))]),
    }


@settings(max_examples=max(200, int(os.environ.get("PROPERTY_EXAMPLES", "200"))), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(_drift_ops(ModelKernel()))), st.integers(2, 6)), max_size=25))
def test_model_events_replayed_on_the_old_dump_give_the_new_dump(ops):
    k = _model()
    batches: list = []
    k.subscribe(DEVICES, NETWORKS, batches.append)
    view = k.dump(DEVICES, NETWORKS)
    table = _drift_ops(k)
    for name, i in ops:
        before = len(batches)
        table[name](i)
        for batch in batches[before:]:
            assert batch, "empty batches are never delivered"
            view = replay(view, batch)
        # Each change's batch alone brings the view up to date (no batch is held back).
        assert view == k.dump(DEVICES, NETWORKS), (name, i)
    assert None not in batches


def test_model_events_of_a_link_deletion_cover_everything_on_it():
    k = _model()
    for i in (2, 3):
        _drift_ops(k)["add_peer"](i)
    old = k.dump(DEVICES, NETWORKS)
    got: list = []
    k.subscribe(DEVICES, NETWORKS, got.append)
    k.remove_link("flannel.1")
    assert len(got) == 1                                # one change, one batch
    assert {(e.op, e.obj.KIND) for e in got[0]} == {("del", "link"), ("del", "route"), ("del", "neigh"),
                                                     ("del", "fdb"), ("del", "address")}
    assert got[0] == events_between(old, k.dump(DEVICES, NETWORKS))
    assert got[0][-1] == KernelEvent("del", VXLAN)      # the device goes last, as in the kernel


def test_model_events_fault_drops_a_batch_as_enobufs():
    k = _model()
    got: list = []
    unsubscribe = k.subscribe(DEVICES, NETWORKS, got.append)
    k.inject("events", errno.ENOBUFS)
    k.add_neigh(PEER_NEIGH)
    k.add_route(PEER_ROUTE)
    assert got == [None, [KernelEvent("set", PEER_ROUTE)]]
    assert k.fired == ["events::ENOBUFS"]
    unsubscribe()
    k.del_route(PEER_ROUTE.dst)
    assert len(got) == 2


def test_model_watch_kernel_blocks_until_stopped_and_delivers_meanwhile():
    k = _model()
    got: list = []
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=k.watch_kernel, args=(DEVICES, NETWORKS, got.append, stop, ready), daemon=True)
    t.start()
    assert ready.wait(10)
    k.add_neigh(PEER_NEIGH)
    assert got == [[KernelEvent("set", PEER_NEIGH)]]
    stop.set()
    t.join(10)
    assert not t.is_alive()
    k.del_neigh("flannel.1", PEER_NEIGH.ip)
    assert len(got) == 1                                # unsubscribed on the way out


# ------------------------------------------------ the real kernel (root)
# A node in a fresh namespace (veth underlay, flannel.1, cni0, two peers,
# IPv6 too); a change is made behind the watcher's back with iproute2, then
# a marker (a permanent neighbour on cni0, added and deleted) is written:
# notifications arrive in order, so once the marker's deletion is seen,
# everything the change caused has been seen too.
PEERS = (2, 3)
BASE = [
    "ip link add veth0 type veth peer name veth1",
    "ip addr add 198.18.0.1/24 dev veth0",
    "ip link set veth0 up",
    "ip link set veth1 up",
    "ip link add flannel.1 address 0a:58:64:40:01:00 type vxlan id 1 local 198.18.0.1 dstport 8472 nolearning "
    "dev veth0",
    "ip addr add 100.64.1.0/32 dev flannel.1",
    "ip -6 addr add fd00:64:1::/128 dev flannel.1 nodad",
    "ip link set flannel.1 up",
    "ip link add cni0 type bridge",
    "ip addr add 100.64.1.1/24 dev cni0",
    "ip link set cni0 up",
    "ip -6 route replace fd00:64:2::/64 dev flannel.1 proto 73",
    "ip -6 neigh replace fd00:64:2:: lladdr 0a:58:64:40:02:00 dev flannel.1 nud permanent",
] + [cmd for i in PEERS for cmd in (
    f"ip neigh replace 100.64.{i}.0 lladdr 0a:58:64:40:0{i}:00 dev flannel.1 nud permanent",
    f"bridge fdb replace 0a:58:64:40:0{i}:00 dev flannel.1 dst 198.18.0.{i} self permanent",
    f"ip route replace 100.64.{i}.0/24 via 100.64.{i}.0 dev flannel.1 onlink proto 73",
)]

#: A nexthop id of our range (docs/route-layouts.md).
NHID = 0x464C0002
#: name -> (commands, (op, kind, key) that must be among the events)
SCENARIOS = {
    "route-del": (["ip route del 100.64.2.0/24"], ("del", "route", ("100.64.2.0/24", 0))),
    "route6-del": (["ip -6 route del fd00:64:2::/64 dev flannel.1"], ("del", "route", ("fd00:64:2::/64", 1024))),
    "route-changed": (["ip route replace 100.64.2.0/24 via 100.64.3.0 dev flannel.1 onlink"],
                      ("set", "route", ("100.64.2.0/24", 0))),
    "route-blackholed": (["ip route replace blackhole 100.64.2.0/24"], ("set", "route", ("100.64.2.0/24", 0))),
    "route-unreachable": (["ip route replace unreachable 100.64.2.0/24"], ("del", "route", ("100.64.2.0/24", 0))),
    "neigh-learned": (["ip neigh replace 100.64.2.0 lladdr 0a:58:64:40:02:00 dev flannel.1 nud reachable"],
                      ("del", "neigh", ("flannel.1", "100.64.2.0"))),
    "neigh-del": (["ip neigh del 100.64.3.0 dev flannel.1"], ("del", "neigh", ("flannel.1", "100.64.3.0"))),
    "fdb-del": (["bridge fdb del 0a:58:64:40:02:00 dev flannel.1 dst 198.18.0.2 self"],
                ("del", "fdb", ("flannel.1", "0a:58:64:40:02:00"))),
    "fdb-changed": (["bridge fdb replace 0a:58:64:40:02:00 dev flannel.1 dst 198.18.0.9 self permanent"],
                    ("set", "fdb", ("flannel.1", "0a:58:64:40:02:00"))),
    "link-mtu": (["ip link set flannel.1 mtu 1400"], ("set", "link", "flannel.1")),
    "link-address": (["ip link set flannel.1 address 0a:58:64:40:01:99"],
                     ("del", "neigh", ("flannel.1", "100.64.2.0"))),
    "link-down": (["ip link set flannel.1 down"], ("del", "route", ("100.64.3.0/24", 0))),
    "link-del": (["ip link del flannel.1"], ("del", "route", ("100.64.2.0/24", 0))),
    "link-recreated": (["ip link del flannel.1", BASE[4], "ip link set flannel.1 up"], ("set", "link", "flannel.1")),
    "addr-del": (["ip addr del 100.64.1.0/32 dev flannel.1"], ("del", "route", ("100.64.2.0/24", 0))),
    "cni-addr-del": (["ip addr del 100.64.1.1/24 dev cni0"], ("del", "address", ("cni0", "100.64.1.1/24"))),
    "addr-added": (["ip addr add 100.64.1.7/24 dev cni0"], ("set", "address", ("cni0", "100.64.1.7/24"))),
    "nexthop-added": ([f"ip nexthop add id {NHID} via 100.64.2.0 dev flannel.1 onlink proto 73"],
                      ("set", "nexthop", NHID)),
    # The kernel deletes the IPv4 route through a deleted nexthop without a word.
    "nexthop-del": ([f"ip nexthop add id {NHID} via 100.64.2.0 dev flannel.1 onlink proto 73",
                     f"ip route replace 100.64.2.0/24 nhid {NHID} proto 73", f"ip nexthop del id {NHID}"],
                    ("del", "route", ("100.64.2.0/24", 0))),
    # A replaced nexthop changes the gateway a dump shows for the route through it.
    "nexthop-replaced": ([f"ip nexthop add id {NHID} via 100.64.2.0 dev flannel.1 onlink proto 73",
                          f"ip route replace 100.64.2.0/24 nhid {NHID} proto 73",
                          f"ip nexthop replace id {NHID} via 100.64.3.0 dev flannel.1 onlink proto 73"],
                         ("set", "nexthop", NHID)),
    "nexthop-foreign": ([f"ip nexthop add id {NHID} via 198.18.0.254 dev veth0 proto 4"], ("set", "nexthop", NHID)),
}

FOREIGN = [
    "ip route add 198.19.5.0/24 via 198.18.0.254 dev veth0",                        # outside, not ours
    "ip route add 100.64.9.0/24 via 100.64.9.0 dev flannel.1 onlink table 100",     # another table
    "ip neigh replace 100.64.1.77 lladdr 02:00:00:00:00:77 dev cni0 nud reachable",  # learned, on ours
    "ip neigh replace 198.18.0.99 lladdr 02:00:00:00:00:99 dev veth0 nud permanent",  # another device
    "bridge fdb add 02:00:00:00:00:78 dev flannel.1 dst 198.18.0.78 self dynamic",   # not permanent
    "ip addr add 198.18.1.1/24 dev veth0",
    "ip link set veth1 mtu 1400",
]


def _node(ns: str) -> None:
    from tests.netns import run

    for cmd in BASE:
        run(ns, *cmd.split())


class _Watch:
    """A watcher on a thread of its own, collecting its batches."""

    def __init__(self, target) -> None:
        self.batches: list = []
        self.error: BaseException | None = None
        self.stop, self.ready = threading.Event(), threading.Event()

        def body() -> None:
            try:
                target(self.batches.append, self.stop, self.ready)
            except BaseException as exc:    # surfaced by the test
                self.error = exc
                self.ready.set()

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the watcher never subscribed"
        assert self.error is None, self.error

    def events(self) -> list[KernelEvent]:
        return [e for b in list(self.batches) if b is not None for e in b]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


_markers = itertools.cycle(range(100, 250))


def _settle(ns: str, *watches: _Watch, tries: int = 1) -> None:
    """Write and remove a marker neighbour; return once every watcher has seen it go.

    ``tries`` > 1 writes a new marker when one is not seen in time: a watcher
    whose queue overflows loses the marker too.
    """
    from tests.netns import run

    for attempt in range(tries):
        n = next(_markers)
        ip, mac = f"100.64.1.{n}", f"02:00:00:00:fe:{n:02x}"
        run(ns, "ip", "neigh", "replace", ip, "lladdr", mac, "dev", "cni0", "nud", "permanent")
        run(ns, "ip", "neigh", "del", ip, "dev", "cni0")
        gone = KernelEvent("del", Neigh("cni0", ip, mac))
        deadline = time.monotonic() + (30 if tries == 1 else 5)
        while time.monotonic() < deadline and not all(gone in w.events() or w.error for w in watches):
            time.sleep(0.02)
        if all(gone in w.events() for w in watches) or attempt == tries - 1:
            break
    for w in watches:
        assert w.error is None, w.error
        assert gone in w.events(), "the marker never arrived"


def _is_marker(e: KernelEvent) -> bool:
    return e.obj.KIND == "neigh" and e.obj.dev == "cni0"


def _backend(name: str, ns: str):
    from reconciler.kernel.netlink.batched import BatchedBackend
    from reconciler.kernel.netlink.reference import PyrouteBackend

    return PyrouteBackend(ns) if name == "pyroute2" else BatchedBackend(ns)


def _watch_backend(b) -> _Watch:
    return _Watch(lambda cb, stop, ready: b.watch_kernel(DEVICES, NETWORKS, cb, stop, ready))


@pytest.mark.parametrize("backend", ["pyroute2", "batched"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_change_behind_our_back_arrives_as_dump_equal_events(netns, backend, scenario):
    from tests.netns import run

    commands, expected = SCENARIOS[scenario]
    _node(netns)
    with _backend(backend, netns) as b:
        w = _watch_backend(b)
        try:
            before = b.dump(DEVICES, NETWORKS)
            for cmd in commands:
                run(netns, *cmd.split())
            _settle(netns, w)
            after = b.dump(DEVICES, NETWORKS)
        finally:
            w.close()
    events = w.events()
    assert None not in w.batches
    assert expected in {(e.op, e.obj.KIND, e.obj.key) for e in events}, events
    # The last word on each key is the truth: a set equals the dump, a del is absent from it.
    last = {(e.obj.KIND, e.obj.key): e for e in events}
    for (kind, key), e in last.items():
        if e.op == "set":
            assert after.get(kind, key) == e.obj, e
        else:
            assert after.get(kind, key) is None, e
    # And the events carry a view from the old dump to the new one.
    assert replay(before, events) == after


@pytest.mark.parametrize("backend", ["pyroute2", "batched"])
def test_foreign_changes_make_no_events(netns, backend):
    from tests.netns import run

    _node(netns)
    with _backend(backend, netns) as b:
        w = _watch_backend(b)
        try:
            for cmd in FOREIGN:
                run(netns, *cmd.split())
            _settle(netns, w)
        finally:
            w.close()
    assert [e for e in w.events() if not _is_marker(e)] == []
    assert None not in w.batches


def test_a_renamed_device_asks_for_a_resync(netns):
    from tests.netns import run

    _node(netns)
    with _backend("batched", netns) as b:
        w = _watch_backend(b)
        try:
            run(netns, "ip", "link", "set", "flannel.1", "down")
            run(netns, "ip", "link", "set", "flannel.1", "name", "flannel.9")
            _settle(netns, w)
        finally:
            w.close()
    assert None in w.batches
    assert ("del", "flannel.1") in {(e.op, e.obj.key) for e in w.events() if e.obj.KIND == "link"}


def test_pure_and_compiled_decoders_give_identical_events(netns):
    from reconciler.kernel.netlink.batched import BatchedBackend
    from reconciler.kernel.netlink.common import netns_path
    from reconciler.kernel.netlink.events import watch_kernel
    from tests.netns import run

    require_fastpath()
    _node(netns)
    path = netns_path(netns)
    def opener(a: bool):
        return lambda: BatchedBackend(None, accelerate=a)

    watches = [_Watch(lambda cb, stop, ready, a=a: watch_kernel(path, DEVICES, NETWORKS, cb, stop, ready,
                                                                 accelerate=a, open_dumper=opener(a)))
               for a in (False, True)]
    try:
        for cmd in FOREIGN[:4]:
            run(netns, *cmd.split())
        for name in ("route-changed", "neigh-learned", "fdb-changed", "link-mtu", "link-address", "route6-del",
                     "link-down", "addr-del", "link-del"):
            for cmd in SCENARIOS[name][0]:
                run(netns, *cmd.split())
        _settle(netns, *watches)
    finally:
        for w in watches:
            w.close()
    pure, compiled = (w.events() for w in watches)
    assert len(pure) > 10
    assert pure == compiled


def test_lost_notifications_ask_for_a_resync(netns, monkeypatch):
    """A receive queue too small for a burst: the kernel drops notifications (ENOBUFS), the watcher says None,
    seeds itself again and goes on."""
    from reconciler.kernel.netlink import events
    from tests.netns import run

    monkeypatch.setattr(events, "RCVBUF_BYTES", 1)      # the kernel rounds it up to its minimum
    _node(netns)
    burst = "".join(f"neigh replace 100.64.{i // 250}.{i % 250 + 1} lladdr 02:00:00:00:{i // 250:02x}:{i % 250:02x} "
                    f"dev flannel.1 nud permanent\n" for i in range(1000))
    with _backend("batched", netns) as b:
        w = _watch_backend(b)
        try:
            for _ in range(20):                         # each burst is 1,000 notifications at once
                run(netns, "ip", "-batch", "-", input=burst)
                if None in w.batches:
                    break
            _settle(netns, w, tries=10)
            assert None in w.batches
            # Seeded again after the loss, the watcher still tracks the kernel.
            seen = len(w.batches)
            mid = b.dump(DEVICES, NETWORKS)
            run(netns, "ip", "route", "del", "100.64.2.0/24")
            _settle(netns, w)
            after = b.dump(DEVICES, NETWORKS)
        finally:
            w.close()
    later = w.batches[seen:]
    assert None not in later
    assert KernelEvent("del", PEER_ROUTE) in [e for batch in later for e in batch]
    assert replay(mid, [e for batch in later for e in batch]) == after
