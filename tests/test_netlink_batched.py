"""BatchedBackend against a real kernel: the backend contract, held to PyrouteBackend.

Three yardsticks, every one in throwaway namespaces:

* **twins**: two identical one-node underlays; the same change lists go to
  ``BatchedBackend`` in one and ``PyrouteBackend`` in the other.  The
  per-change results (ok, errno, *message*) must be equal, and so must the
  kernels, as iproute2 (``ip -j``, ``bridge -j``: the independent oracle)
  shows them and as either backend dumps them;
* **one namespace, two readers**: ``BatchedBackend.dump() == PyrouteBackend.dump()``;
* **the batching itself**: 5,000 neighbours in one apply (chunks, ACK
  correlation, no ENOBUFS), a failing change in the middle of a batch,
  NLM_F_DUMP_INTR injected through a wrapped ``recv``.

Every test runs with the pure codec and with the compiled one (encoder and
decoders); the compiled case is skipped only when the extension is not built *and* ``CI``
is unset (CI builds it: a missing build fails there).

The story is test_netlink_reference.py's: node 1 (198.18.0.1, 100.64.1.0/24)
learns of node 2 (198.18.0.2, 100.64.2.0/24) and node 3 (198.18.0.3).
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import subprocess

import pytest

import _fastpath
from reconciler.core.errors import DumpInterrupted, NamespaceNotFound, NetlinkError
from reconciler.core.model import Address, Fdb, Link, Neigh, Route
from reconciler.kernel.netlink import NetlinkBackend, wire
from reconciler.kernel.netlink.batched import BatchedBackend
from reconciler.kernel.netlink.reference import PyrouteBackend
from reconciler.core.plan import Change
from tests.conftest_netns import require_root
from tests.netns import bridge_json, ip_json, netns_exists, run, unique_name
from tests.test_netlink_reference import (
    ADDRESSES,
    DEVICES,
    FLANNEL1,
    REMOTES,
    creates,
    host1,
    host2,
    host3,
    mac2,
    mac3,
    remote,
)

pytestmark = pytest.mark.root

#: cni0 with a MAC of our choosing, so that twin kernels are equal byte for byte.
CNI0 = Link("cni0", "bridge", mtu=1450, mac="0a:58:64:40:01:01", up=True)


@pytest.fixture
def node(underlay_factory):
    """Node 1 of a three-node underlay."""
    return underlay_factory(3).nodes[0]


@pytest.fixture
def backend(node, accelerate):
    with BatchedBackend(node.ns, accelerate=accelerate) as b:
        assert b.accelerated is accelerate
        yield b


@pytest.fixture
def installed(backend):
    results = backend.apply(creates(FLANNEL1, CNI0, *ADDRESSES, *REMOTES))
    assert [r.message for r in results if not r.ok] == []
    return backend


@pytest.fixture
def twins(underlay_factory, accelerate):
    """(batched, reference): one backend in each of two identical one-node underlays."""
    a, b = underlay_factory(1).nodes[0], underlay_factory(1).nodes[0]
    with BatchedBackend(a.ns, accelerate=accelerate) as batched, PyrouteBackend(b.ns) as reference:
        batched.ns, reference.ns = a.ns, b.ns
        yield batched, reference


# ------------------------------------------------------------------ the oracle

def oracle(ns: str) -> dict:
    """What iproute2 shows of everything the backends touch, minus what the kernel varies by itself."""
    links = {}
    for x in ip_json(ns, "-d link show"):
        info = x.get("linkinfo", {})
        data = info.get("info_data", {}) if info.get("info_kind") == "vxlan" else {}
        mac = x.get("address") if x["ifname"] in DEVICES else None     # eth0 is a veth with a random MAC
        links[x["ifname"]] = (x["mtu"], mac, "UP" in x["flags"], info.get("info_kind"),
                              tuple(sorted((k, json.dumps(v)) for k, v in data.items())))
    addrs = sorted((x["ifname"], a["family"], a["local"], a["prefixlen"], a.get("scope"))
                   for x in ip_json(ns, "addr show") for a in x["addr_info"]
                   if not (a["family"] == "inet6" and a["local"].startswith("fe80")))
    # Routes the kernel makes itself (connected, local, IPv6 multicast) appear
    # asynchronously, as addresses and link state settle: compared via the addresses.
    routes = sorted(json.dumps(r, sort_keys=True) for fam in ("-4", "-6")
                    for r in ip_json(ns, f"{fam} route show table all")
                    if not r["dst"].startswith("fe80") and r.get("protocol") != "kernel")
    neighs = sorted(json.dumps(n, sort_keys=True) for n in ip_json(ns, "neigh show nud permanent"))
    fdb = sorted(json.dumps(f, sort_keys=True) for f in bridge_json(ns, "fdb show dev flannel.1")) \
        if "flannel.1" in links else []
    accept_ra = run(ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra", check=False).stdout.strip()
    return {"links": links, "addrs": addrs, "routes": routes, "neighs": neighs, "fdb": fdb, "accept_ra": accept_ra}


def outcome(results) -> list[tuple]:
    return [(r.change, r.ok, r.errno, r.message, r.skipped) for r in results]


def assert_twins_agree(batched: BatchedBackend, reference: PyrouteBackend, changes: list[Change]) -> None:
    """The same changes through both backends: equal results, equal kernels, equal dumps."""
    got, want = batched.apply(changes), reference.apply(changes)
    assert outcome(got) == outcome(want)
    assert oracle(batched.ns) == oracle(reference.ns)
    nets = ["100.64.0.0/10"]
    dump = batched.dump(DEVICES, nets)
    assert dump == reference.dump(DEVICES, nets)
    with PyrouteBackend(batched.ns) as other:               # same namespace, the other reader
        assert other.dump(DEVICES, nets) == dump


# --------------------------------------------------------------- the contract

def test_it_is_a_netlink_backend(backend):
    assert isinstance(backend, NetlinkBackend)
    assert repr(backend).startswith("BatchedBackend(netns=")


def test_twins_after_the_same_change_lists(twins):
    """Cold install, idempotent replay, in-place replace, link update, deletes, link re-create."""
    batched, reference = twins
    steps = [
        creates(FLANNEL1, CNI0, *ADDRESSES, *REMOTES),
        creates(*ADDRESSES, *REMOTES),                                          # replay: nothing moves
        [Change("update", Neigh("flannel.1", "100.64.2.0", "0a:58:64:40:02:ff")),
         Change("update", Fdb("flannel.1", mac2, "198.18.0.22")),
         Change("update", Route("100.64.2.0/24", "100.64.2.0", "flannel.1", onlink=True)),
         Change("create", Route("100.64.5.0/24", "100.64.5.0", "flannel.1", onlink=True, metric=50)),
         Change("create", Route("100.64.6.0/24", host2, None)),                  # DirectRouting: no dev
         Change("create", Address("cni0", "fd00:64::1/64"))],
        [Change("update", Link("flannel.1", "vxlan", mtu=1400, mac="0a:58:64:40:01:99", up=False),
                live=FLANNEL1)],
        [Change("update", Link("flannel.1", "vxlan", up=True), live=Link("flannel.1", "vxlan", up=False))]
        + creates(*REMOTES),                        # down dropped the routes, the MAC change the neighbours
        [Change("delete", Route("100.64.5.0/24", "100.64.5.0", "flannel.1", metric=50)),
         Change("delete", Neigh("flannel.1", "100.64.3.0", mac3)),
         Change("delete", Fdb("flannel.1", mac3, host3)),
         Change("delete", Address("cni0", "fd00:64::1/64"))],
        [Change("delete", FLANNEL1), Change("create", FLANNEL1)] + creates(ADDRESSES[0], *REMOTES),
    ]
    for changes in steps:
        assert_twins_agree(batched, reference, changes)


def test_a_failing_change_does_not_stop_the_others(twins):
    """Failures in the middle of one batch: each answered by seq, with the reference's words."""
    batched, reference = twins
    assert_twins_agree(batched, reference, creates(FLANNEL1, CNI0, *ADDRESSES, *REMOTES))
    extra = Neigh("flannel.1", "100.64.4.0", "0a:58:64:40:04:00")
    changes = [
        Change("create", Neigh("flannel.1", "100.64.10.0", "0a:58:64:40:0a:00")),
        Change("create", Neigh("nosuch0", "100.64.4.0", mac2)),
        Change("create", Route("100.64.4.0/24", "100.64.4.0", "nosuch0", onlink=True)),
        Change("create", Fdb("nosuch0", mac2, host2)),
        Change("create", Address("nosuch0", "100.64.4.1/24")),
        Change("create", Route("100.64.9.0/24", "100.64.9.0", "flannel.1")),     # not onlink: unreachable
        Change("create", Neigh("flannel.1", "100.64.4.0", "zz:58")),              # malformed MAC
        Change("create", Route("100.64.4.1/24", None, "flannel.1")),              # host bits set
        Change("create", Route("100.64.11.0/24", "fd00::1", "flannel.1")),        # gateway of another family
        Change("create", Fdb("flannel.1", "0a:58:64:40:0b:00", "not-an-ip")),
        Change("update", Link("nosuch0", "bridge", mtu=1400)),
        Change("create", FLANNEL1),                                               # exists: EEXIST
        Change("create", extra),
        Change("create", Route("100.64.4.0/24", "100.64.4.0", "flannel.1", onlink=True)),
    ]
    results = batched.apply(changes)
    assert [r.change for r in results] == changes
    assert [(r.ok, r.errno) for r in results] == [
        (True, None), (False, errno.ENODEV), (False, errno.ENODEV), (False, errno.ENODEV), (False, errno.ENODEV),
        (False, errno.ENETUNREACH), (False, errno.EINVAL), (False, errno.EINVAL), (False, errno.EINVAL),
        (False, errno.EINVAL), (False, errno.ENODEV), (False, errno.EEXIST), (True, None), (True, None)]
    assert results[5].message.startswith("route replace 100.64.9.0/24 via 100.64.9.0 dev flannel.1: ")
    assert outcome(reference.apply(changes)) == outcome(results)
    assert oracle(batched.ns) == oracle(reference.ns)
    state = batched.dump(DEVICES)
    assert state.get("neigh", extra.key) == extra
    assert state.get("route", ("100.64.4.0/24", 0)) is not None


def test_a_chunk_whose_last_request_fails_still_says_the_others_succeeded(installed):
    """Errors only: the request that closes a chunk asks for the ACK; when it fails, its error is that
    answer, and the requests before it that drew none succeeded."""
    ok = [Neigh("flannel.1", f"100.64.{n}.0", f"0a:58:64:40:{n:02x}:00") for n in range(30, 33)]
    bad = Route("100.64.9.0/24", "100.64.9.0", "flannel.1")        # not onlink: unreachable
    results = installed.apply(creates(*ok, bad))
    assert [(r.ok, r.errno) for r in results] == [(True, None)] * 3 + [(False, errno.ENETUNREACH)]
    state = installed.dump(DEVICES)
    assert all(state.get("neigh", n.key) == n for n in ok)


def test_deleting_what_is_already_gone_succeeds(installed):
    gone = [Route("100.64.77.0/24", "100.64.77.0", "flannel.1", onlink=True), Fdb("flannel.1", mac3, host2),
            Fdb("flannel.1", "0a:58:64:40:77:00", host2), Neigh("flannel.1", "100.64.77.0", mac2),
            Address("flannel.1", "100.64.77.0/32"), Link("flannel.77", "vxlan"),
            Neigh("nosuch0", "100.64.2.0", mac2), Route("100.64.78.0/24", None, "nosuch0")]
    before = installed.dump(DEVICES)
    results = installed.apply([Change("delete", o) for o in gone])
    assert [(r.change.obj, r.ok) for r in results] == [(o, True) for o in gone]
    # (The kernel itself accepts an FDB delete whose dst matches no remote of that MAC, and does nothing.)
    assert [r.message for r in results] == ["already gone", ""] + ["already gone"] * 6
    assert installed.dump(DEVICES) == before


def test_dump_equals_the_reference_dump_and_leaves_foreign_state_out(installed, node):
    ns = node.ns
    run(ns, "ip", "route", "add", "100.64.200.0/24", "via", "198.18.0.254", "dev", "eth0", "proto", "static")
    run(ns, "ip", "route", "add", "100.64.201.0/24", "dev", "flannel.1", "table", "100", "proto", "73")
    run(ns, "ip", "route", "add", "100.64.202.0/24", "via", "198.18.0.254", "dev", "eth0", "proto", "73")
    run(ns, "ip", "route", "add", "10.9.0.0/16", "via", "198.18.0.254", "dev", "eth0")
    run(ns, "ip", "route", "add", "100.64.203.0/24", "nexthop", "via", "198.18.0.254", "dev", "eth0",
        "nexthop", "via", "198.18.0.253", "dev", "eth0")                          # multipath: never ours
    run(ns, "ip", "neigh", "add", "100.64.7.0", "lladdr", "0a:58:64:40:07:00", "dev", "flannel.1", "nud", "reachable")
    run(ns, "bridge", "fdb", "add", "0a:58:64:40:08:00", "dev", "flannel.1", "dst", "198.18.0.8", "self")
    run(ns, "ip", "addr", "add", "198.18.0.201/24", "dev", "eth0")
    run(ns, "ip", "-6", "route", "add", "fd00:64:1::/64", "dev", "flannel.1", "proto", "73")
    with PyrouteBackend(ns) as reference:
        for networks in ((), ("100.64.0.0/10",), ("100.64.0.0/10", "10.9.0.0/16", "fd00::/8")):
            state = installed.dump(DEVICES, networks)
            assert state == reference.dump(DEVICES, networks)
    routes = {r.dst: r for r in state.of("route").values()}
    assert routes["100.64.200.0/24"].protocol == 4 and routes["10.9.0.0/16"].protocol == 3
    assert "100.64.201.0/24" not in routes and "100.64.203.0/24" not in routes
    assert routes["fd00:64:1::/64"] == Route("fd00:64:1::/64", None, "flannel.1", metric=1024, protocol=73)
    assert ("flannel.1", "100.64.7.0") not in state.of("neigh")                 # not permanent
    assert not any(a.dev == "eth0" or a.cidr.startswith("fe80") for a in state.of("address").values())


def test_dump_of_missing_devices_is_empty(backend):
    assert len(backend.dump(DEVICES)) == 0


def test_five_thousand_neighbours_in_one_apply(installed, node, monkeypatch):
    """Chunked sends, one answer per chunk (errors only: the last request's ACK), and no ENOBUFS."""
    sends, answers = [], []
    real, real_recv = installed._send, installed._recv
    monkeypatch.setattr(installed, "_send", lambda data: sends.append(len(data)) or real(data))
    monkeypatch.setattr(installed, "_recv", lambda *a: answers.append(1) or real_recv(*a))
    neighs = [Neigh("flannel.1", str(ipaddress.ip_address("100.65.0.0") + 256 * i),
                    "0a:58:%02x:%02x:%02x:00" % (i >> 16, (i >> 8) & 255, i & 255)) for i in range(5000)]
    results = installed.apply(creates(*neighs))
    assert [r.message for r in results if not r.ok] == []
    assert [r.change.obj for r in results] == neighs
    assert len(sends) > 1 and max(sends) <= 32 * 1024                 # chunks, not one huge send
    # The link dump that resolves the names, then one ACK a chunk (not 5,000).
    assert len(sends) <= len(answers) <= 2 * len(sends)
    state = installed.dump(DEVICES)
    assert all(state.get("neigh", n.key) == n for n in neighs)
    listed = ip_json(node.ns, "neigh show dev flannel.1 nud permanent")
    assert len(listed) == 5000 + len(REMOTES) // 3
    # And all of them away again, in one apply.
    results = installed.apply([Change("delete", n) for n in neighs])
    assert all(r.ok and not r.message for r in results)
    assert len(ip_json(node.ns, "neigh show dev flannel.1 nud permanent")) == len(REMOTES) // 3


def test_an_interrupted_dump_is_retried_then_refused(installed, monkeypatch):
    """NLM_F_DUMP_INTR injected on NLMSG_DONE only (where the kernel may put it) through a wrapped recv."""
    real = installed._recv
    budget = {"interruptions": 2}

    def flaky(size=65536):
        data = bytearray(real(size))
        off = 0
        while off + 16 <= len(data):
            mlen, mtype, mflags = wire.NLMSGHDR.unpack_from(data, off)[:3]
            if mtype == wire.NLMSG_DONE and budget["interruptions"] > 0:
                budget["interruptions"] -= 1
                wire.NLMSGHDR.pack_into(data, off, mlen, mtype, mflags | wire.NLM_F_DUMP_INTR,
                                        *wire.NLMSGHDR.unpack_from(data, off)[3:])
            off += (mlen + 3) & ~3
        return bytes(data)

    monkeypatch.setattr(installed, "_recv", flaky)
    assert installed.dump(DEVICES).get("link", "flannel.1") == FLANNEL1
    assert budget["interruptions"] == 0

    budget["interruptions"] = 10 ** 6
    with pytest.raises(DumpInterrupted, match="NLM_F_DUMP_INTR"):
        installed.dump(DEVICES)


def test_a_lost_answer_is_reported_failed_never_trusted(installed, monkeypatch):
    """ACKs that never come (a timeout) fail their changes ("state unknown"); late ones are ignored later."""
    real = installed._recv

    def lossy(size=65536):
        data = real(size)
        if wire.NLMSGHDR.unpack_from(data, 0)[1] == wire.NLMSG_ERROR:
            raise TimeoutError("timed out")
        return data

    neighs = [Neigh("flannel.1", f"100.64.{n}.0", f"0a:58:64:40:{n:02x}:00") for n in range(20, 25)]
    monkeypatch.setattr(installed, "_recv", lossy)
    results = installed.apply(creates(*neighs))
    assert [(r.ok, r.errno) for r in results] == [(False, errno.ETIMEDOUT)] * len(neighs)
    assert "answer lost, state unknown" in results[0].message
    monkeypatch.setattr(installed, "_recv", real)
    assert all(r.ok for r in installed.apply(creates(*neighs)))     # the late ACKs of the first try are skipped
    state = installed.dump(DEVICES)
    assert all(state.get("neigh", n.key) == n for n in neighs)


def test_the_batch_goes_through_the_compiled_encoder_when_accelerated(installed, accelerate, monkeypatch):
    """accelerated: _fastpath.encode_batch/match_acks encode and match the batch; else wire's.  Same outcome."""
    calls = []
    for module, name in ((_fastpath, "compiled"), (wire, "pure")):
        for fn in ("encode_batch", "match_acks"):
            real = getattr(module, fn)
            if real is not None:
                monkeypatch.setattr(module, fn, lambda *a, _real=real, _tag=(name, fn): calls.append(_tag) or _real(*a))
    objs = [Neigh("flannel.1", "100.64.30.0", "0a:58:64:40:1e:00"), Fdb("flannel.1", "0a:58:64:40:1e:00", host3),
            Route("100.64.30.0/24", "100.64.30.0", "flannel.1", onlink=True, protocol=73),
            Address("cni0", "fd00:64:1::1/64"),
            Neigh("flannel.1", "fd00:64:30::", "0a:58:64:40:1e:00")]
    results = installed.apply(creates(*objs))
    assert [r.message for r in results if not r.ok] == []
    used = "compiled" if accelerate else "pure"
    assert set(calls) == {(used, "encode_batch"), (used, "match_acks")}
    assert calls.count((used, "encode_batch")) == 1                  # one batch for the five changes
    state = installed.dump(DEVICES)
    assert [o for o in objs if state.get(o.KIND, o.key) != o] == []


def test_names_are_resolved_by_one_link_dump_per_apply(installed, monkeypatch):
    calls = []
    real = installed._refresh_links
    monkeypatch.setattr(installed, "_refresh_links", lambda: calls.append(1) or real())
    neighs = [Neigh("flannel.1", f"100.64.{n}.0", f"0a:58:64:40:{n:02x}:00") for n in range(10, 210)]
    assert all(r.ok for r in installed.apply(creates(*neighs)))
    assert len(calls) == 1


# ---------------------------------------------------------------- namespaces

def test_a_missing_namespace_is_refused_and_not_created(accelerate):
    require_root()
    name = unique_name("missing")
    with pytest.raises(NamespaceNotFound, match=name):
        BatchedBackend(name, accelerate=accelerate)
    assert not netns_exists(name)
    with pytest.raises(NamespaceNotFound):
        BatchedBackend("../../proc/1/ns/net", accelerate=accelerate)


def test_everything_happens_inside_the_namespace(backend, node):
    name = f"frb{os.getpid() % 100000}"                     # an ifname (<= 15 chars) unique to this run
    assert backend.apply(creates(Link(name, "bridge", up=False)))[0].ok
    assert [x["ifname"] for x in ip_json(node.ns, f"link show {name}")] == [name]
    host = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert name not in {x["ifname"] for x in json.loads(host)}
    # The socket stays in the namespace whatever thread uses it later.
    assert backend.dump([name]).get("link", name).type == "bridge"


# ------------------------------------------------------------------ underlay

def test_underlay_like_the_reference(backend, node):
    run(node.ns, "ip", "addr", "add", "169.254.3.3/16", "dev", "eth0")
    with PyrouteBackend(node.ns) as reference:
        for spec in (None, "eth0", host1, "169.254.3.3"):
            assert backend.underlay(spec) == reference.underlay(spec)
        for spec in ("nosuch0", "198.18.0.99", "fd00::1"):
            with pytest.raises(NetlinkError) as got:
                backend.underlay(spec)
            with pytest.raises(NetlinkError) as want:
                reference.underlay(spec)
            assert (str(got.value), got.value.errno) == (str(want.value), want.value.errno)


def test_underlay_errors_say_what_is_missing(netns, accelerate):
    run(netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    with BatchedBackend(netns, accelerate=accelerate) as bare:
        with pytest.raises(NetlinkError, match="default route"):
            bare.underlay(None)
        with pytest.raises(NetlinkError, match="no usable IPv4") as exc:
            bare.underlay("eth0")
        assert exc.value.errno == errno.EADDRNOTAVAIL


def test_two_nodes_written_by_the_batched_backend_carry_vxlan_traffic(underlay_factory, accelerate):
    net = underlay_factory(2)
    n1, n2 = net.nodes
    for me, peer, my_mac, peer_mac, i, j in ((n1, n2, "0a:58:64:40:01:00", mac2, 1, 2),
                                             (n2, n1, mac2, "0a:58:64:40:01:00", 2, 1)):
        link = Link("flannel.1", "vxlan", mtu=1450, mac=my_mac, up=True, vni=1, local=me.ip, port=8472,
                    learning=False, gbp=False, underlay="eth0")
        with BatchedBackend(me.ns, accelerate=accelerate) as b:
            results = b.apply(creates(link, Address("flannel.1", f"100.64.{i}.0/32"), *remote(j, peer.ip, peer_mac)))
            assert [r.message for r in results if not r.ok] == []
    proc = run(n1.ns, "ping", "-c", "1", "-W", "2", "-I", "100.64.1.0", "100.64.2.0", check=False)
    if proc.returncode != 0:
        proc = run(n1.ns, "ping", "-c", "2", "-W", "2", "-I", "100.64.1.0", "100.64.2.0", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------ the real-kernel property


# The convergence property runs over every backend in tests/test_kernel_properties.py.
