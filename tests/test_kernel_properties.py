"""The convergence properties of test_properties.py, against the real kernel through PyrouteBackend.

Each example draws a cluster and a damaged live kernel from
``tests/strategies.py`` (a ``ModelKernel``), *replays* that kernel into a
fresh namespace with iproute2, and runs one cycle (dump, plan, apply)
through ``PyrouteBackend``.  Then, with iproute2 as the oracle:

1. converges: a second plan from a fresh dump has no changes (and the same
   conflicts), and the owned live state equals the desired state;
2. is safe: every foreign object (links, addresses, routes of every table,
   neighbours, FDB entries) is as it was, row for row;
3. is minimal: no change reached the backend for an object that was right,
   and those objects' ``ip -j`` rows are unchanged (a right ``proto boot``
   route stays ``boot``: a rewrite would make it ``73``).

Objects on a device the plan re-creates are left out of 2 and 3: the
kernel drops them with the device, by design.  Left out as well, because
the kernel makes and changes them by itself: ``proto kernel`` routes (they
follow addresses and link state), IPv6 link-local addresses, ``operstate``
(set asynchronously by linkwatch) and bridge-port timers.

The clusters are IPv4 or dual stack (``clusters(ipv6=True)``): the
namespace then has IPv6 on with DAD off, and both families are read back.

Three real-kernel side effects are part of the planner's contract and are
drawn here: changing a device's MAC flushes its neighbour entries; deleting
a device's last IPv4 address flushes its routes and neighbours; and the
connected route of a stale address of ours is no conflict for a route we
want at the same key (it goes with the address).
"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconciler.kernel.apply import apply_plan
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.leases import validate_leases
from reconciler.core.model import Address, Fdb, Neigh, Route
from reconciler.kernel.netlink.reference import PyrouteBackend
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.reconcile import compute_cycle, dump_live
from tests.conftest_fastpath import require_fastpath
from tests.conftest_netns import require_root
from tests.model_kernel import MAIN, ModelKernel
from reconciler.tools.lab.netns import enable_ipv6
from tests.netns import bridge_json, ip_json, netns, run
from tests.contract import already_right, assert_converged, side_effects
from tests.strategies import PREFIX, UNDERLAY, clusters, live_kernels

pytestmark = pytest.mark.root

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

#: iproute2's names of route protocols (``ip -j`` prints a name when it knows one).
PROTOCOLS = {"redirect": 1, "kernel": 2, "boot": 3, "static": 4}
TABLES = {"main": 254, "local": 255, "default": 253}


@pytest.fixture(autouse=True, scope="module")
def _root():
    require_root()


# -------------------------------------------------------------- the replay

def replay(model: ModelKernel, ns: str) -> None:
    """Write the model kernel's state into the namespace with iproute2, as an administrator would.

    Every veth gets a peer named ``<name>p`` (up), which the model does not
    have.  A gateway route that the kernel would refuse (neither onlink nor
    inside a connected prefix of its device) is written onlink via
    100.64.0.9 (IPv6: fd00:64:0:ff::9): still drifted, and a state the kernel can hold.
    """
    for name, e in model.links.items():
        link = e.link
        argv = ["ip", "link", "add", name]
        argv += ["address", link.mac] if link.mac else []
        argv += ["mtu", str(link.mtu)] if link.mtu else []
        if link.type == "vxlan":
            argv += ["type", "vxlan", "id", str(link.vni), "dstport", str(link.port or 0)]
            argv += ["dev", link.underlay] if link.underlay else []
            argv += ["local", link.local] if link.local else []
            argv += ["learning" if link.learning else "nolearning"] + (["gbp"] if link.gbp else [])
        elif link.type == "veth":
            argv += ["type", "veth", "peer", "name", f"{name}p"]
        else:
            argv += ["type", link.type]
        run(ns, *argv)
        if e.master:
            run(ns, "ip", "link", "set", name, "master", e.master)
        if link.type == "veth":
            run(ns, "ip", "link", "set", f"{name}p", "up")
        if link.up:
            run(ns, "ip", "link", "set", name, "up")
    for dev, cidr in sorted(model.addresses):
        run(ns, "ip", "addr", "add", cidr, "dev", dev)
    for e in model.neighs.values():
        n = e.neigh
        run(ns, "ip", "neigh", "replace", n.ip, "lladdr", n.mac, "dev", n.dev,
            "nud", "permanent" if e.permanent else "stale")
    for e in model.fdbs.values():
        f = e.fdb
        run(ns, "bridge", "fdb", "replace", f.mac, "dev", f.dev, "dst", f.dst, "self",
            "permanent" if e.self_permanent else "static")
    connected = [(dev, ipaddress.ip_interface(cidr).network) for dev, cidr in model.addresses
                 if model.links[dev].link.up]
    for nh in model.nexthops.values():
        run(ns, "ip", "nexthop", "add", "id", str(nh.id), "via", nh.gateway, "dev", nh.dev,
            *(["onlink"] if nh.onlink else []), *(["proto", str(nh.protocol)] if nh.protocol else []))
    for (table, dst, metric), r in model.routes.items():
        if r.nhid:
            run(ns, "ip", "route", "add", dst, "nhid", str(r.nhid), *(["metric", str(metric)] if metric else []),
                "table", str(table), "proto", str(r.protocol))
            continue
        gateway, onlink = r.gateway, r.onlink
        if gateway is not None and not onlink and not any(
                dev == r.dev and ipaddress.ip_address(gateway) in net for dev, net in connected):
            event("a drifted route written onlink via 100.64.0.9 (the kernel refuses it as drawn)")
            gateway, onlink = ("fd00:64:0:ff::9" if ":" in dst else "100.64.0.9"), True
        argv = ["ip", "route", "add", dst]
        argv += ["via", gateway] if gateway else []
        argv += ["dev", r.dev] + (["onlink"] if onlink else [])
        argv += ["metric", str(metric)] if metric else []
        argv += ["table", str(table), "proto", str(r.protocol)]
        run(ns, *argv)


# ------------------------------------------------------------- the oracle

def _proto(row: dict) -> int:
    p = row.get("protocol", "boot")
    return PROTOCOLS[p] if p in PROTOCOLS else int(p)


def _link_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "operstate"}


#: The pod range every generated cluster network lies in (tests/strategies.py).
_PODS = ipaddress.ip_network("100.64.0.0/10")


def kernel_view(ns: str, vxlan_devices) -> dict[str, dict]:
    """Every object iproute2 shows, keyed like the model, each with its model value and its ``ip -j`` row."""
    view: dict[str, dict] = {"link": {}, "address": {}, "route": {}, "neigh": {}, "fdb": {}}
    for row in ip_json(ns, "link show"):
        view["link"][row["ifname"]] = (row["ifname"], _link_row(row))
    for link in ip_json(ns, "addr show"):
        for a in link["addr_info"]:
            if a["family"] == "inet6" and ipaddress.ip_address(a["local"]).is_link_local:
                continue
            cidr = f"{ipaddress.ip_address(a['local'])}/{a['prefixlen']}"
            view["address"][(link["ifname"], cidr)] = (Address(link["ifname"], cidr), a)
    rows = [(4, r) for r in ip_json(ns, "-4 route show table all")]
    rows += [(6, r) for r in ip_json(ns, "-6 route show table all")]
    for family, r in rows:
        # Kernel routes are the kernel's, except cni0's IPv4 connected route, which is desired state.
        kernel_made = _proto(r) == PROTOCOLS["kernel"] and not (
            family == 4 and r.get("dev") == "cni0" and ipaddress.ip_network(r["dst"]).subnet_of(_PODS))
        if kernel_made or r.get("type", "unicast") != "unicast":
            continue
        table = r.get("table", "main")
        table = TABLES.get(table, None) or int(table)
        if r["dst"] == "default":
            dst = "0.0.0.0/0" if family == 4 else "::/0"
        else:
            dst = str(ipaddress.ip_network(r["dst"]))
        route = Route(dst, r.get("gateway"), r.get("dev"), "onlink" in r.get("flags", []), r.get("metric", 0),
                      _proto(r))
        view["route"][(table, dst, route.metric)] = (route, r)
    for n in ip_json(ns, "-4 neigh show"):
        if "lladdr" in n:
            view["neigh"][(n["dev"], n["dst"])] = (Neigh(n["dev"], n["dst"], n["lladdr"]), n)
    for n in ip_json(ns, "-6 neigh show"):
        # Link-local entries are the kernel's own neighbour discovery, never drawn.
        if "lladdr" in n and not ipaddress.ip_address(n["dst"]).is_link_local:
            dst = str(ipaddress.ip_address(n["dst"]))
            view["neigh"][(n["dev"], dst)] = (Neigh(n["dev"], dst, n["lladdr"]), n)
    for dev in vxlan_devices:
        if dev in view["link"]:
            for f in bridge_json(ns, ["fdb", "show", "dev", dev]):
                if f.get("dst"):
                    view["fdb"][(dev, f["mac"])] = (Fdb(dev, f["mac"], f["dst"]), f)
    return view


def _owned(kind: str, key, obj, row: dict, policy: FlannelOwnership) -> bool:
    """The ownership rules, applied to what iproute2 shows."""
    if kind == "link":
        return key in policy.devices
    if kind == "route":
        return key[0] == MAIN and policy.owns(obj)
    if kind == "neigh":
        return "PERMANENT" in row["state"] and policy.owns(obj)
    if kind == "fdb":
        return row.get("state") == "permanent" and "self" in row.get("flags", []) and policy.owns(obj)
    return policy.owns(obj)


def foreign(view: dict, policy: FlannelOwnership, spared: set[str], neigh_flushed: set[str] = frozenset(),
            wanted_neighs=frozenset()) -> dict:
    """The ``ip -j`` rows of every object that is not ours and not on a re-created device.

    Also left out: the neighbours of a device whose MAC the plan changes (the
    kernel flushes them), and learned neighbours at the key of one we want
    (the kernel's ARP cache, which ``replace`` makes ours)."""
    out = {}
    for kind, objs in view.items():
        for key, (obj, row) in objs.items():
            dev = key if kind == "link" else obj.dev
            if dev in spared or _owned(kind, key, obj, row, policy):
                continue
            if kind == "neigh" and (dev in neigh_flushed or key in wanted_neighs):
                continue
            out[(kind, key)] = row
    return out


def _live_key(kind: str, obj) -> tuple:
    """The kernel view's key of a model object (routes: main table)."""
    if kind == "route":
        return (MAIN, obj.dst, obj.metric)
    return obj.key


class Recording:
    """The backend, with every change that reaches it written down."""

    def __init__(self, backend) -> None:
        self.backend, self.writes = backend, []

    def apply(self, changes):
        self.writes += [(c.kind, c.obj.key) for c in changes]
        return self.backend.apply(changes)


# ------------------------------------------------------------ the property

def _open_backend(kind: str, ns: str):
    if kind == "pyroute2":
        return PyrouteBackend(ns)
    from reconciler.kernel.netlink.batched import BatchedBackend

    return BatchedBackend(ns, accelerate=(kind == "batched-cython"))


@pytest.fixture(scope="module", params=["pyroute2", "batched", "batched-cython"])
def backend_kind(request) -> str:
    """Every backend is held to the same contract."""
    if request.param == "batched-cython":
        require_fastpath()
    return request.param


@SETTINGS
@given(cluster=clusters(ipv6=True), data=st.data())
def test_one_apply_converges_safely_and_minimally_in_a_real_kernel(backend_kind, cluster, data):
    config = parse_network_config(cluster.config_json)
    node = NodeParams(public_ip=cluster.public_ip, underlay_mtu=1500, underlay=UNDERLAY)
    leases, _ = validate_leases(config, cluster.kvs, PREFIX)
    desired0 = desired_state(config, leases, node, cluster.on_link)
    model = data.draw(live_kernels(desired0, config.device_name))
    policy = FlannelOwnership(config)

    if config.enable_ipv6:
        event("dual stack")
    with netns("prop") as ns:
        enable_ipv6(ns)     # before any device exists: no DAD, so addresses are usable at once
        replay(model, ns)
        with _open_backend(backend_kind, ns) as backend:
            if backend_kind != "pyroute2":  # the same kernel reads the same through every backend
                with PyrouteBackend(ns) as reference:
                    assert dump_live(backend, config) == dump_live(reference, config)
            cycle = compute_cycle(config, cluster.kvs, PREFIX, node, dump_live(backend, config), cluster.on_link)
            recreated, mac_changed = side_effects(cycle)
            for c in cycle.plan:
                event(f"{c.op} {c.kind}")
            if cycle.plan.conflicts:
                event("conflict with a foreign route")
            before = kernel_view(ns, policy.vxlan_devices)

            recording = Recording(backend)
            results = apply_plan(recording, cycle.plan, cycle.desired)
            assert [r.message for r in results if not r.ok] == []

            dump = dump_live(backend, config)
            again = compute_cycle(config, cluster.kvs, PREFIX, node, dump, cluster.on_link)
            after = kernel_view(ns, policy.vxlan_devices)

    # 1. Converged and complete (a route blocked by a foreign one is reported every time, never written).
    assert_converged(cycle, again, dump)

    # 2. Safe: every foreign object is as it was, row for row.
    wanted = frozenset(cycle.desired.of("neigh"))
    f_before = foreign(before, policy, recreated, mac_changed, wanted)
    f_after = foreign(after, policy, recreated, mac_changed, wanted)
    changed = {k: (f_before.get(k), f_after.get(k)) for k in f_before.keys() | f_after.keys()
               if f_before.get(k) != f_after.get(k)}
    assert not changed, changed

    # 3. Minimal: nothing that was right reached the backend, and its rows did not move.
    keys = already_right(cycle)
    right = [obj for obj in cycle.desired if (obj.KIND, obj.key) in keys]
    assert not keys & set(recording.writes)
    for obj in right:
        key = _live_key(obj.KIND, obj)
        assert before[obj.KIND][key][1] == after[obj.KIND][key][1], (obj, before[obj.KIND][key], after[obj.KIND][key])
