"""apply_plan against the model kernel: results per change, dependencies, faults.

The fault matrix follows Calico's: every scenario runs under each named fault,
must converge within a bounded number of cycles once the fault is gone, and
every injected fault must actually have fired.
"""
import errno

import pytest

from reconciler.kernel.apply import apply_plan
from reconciler.core.model import Fdb, Neigh, Route
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.model import Link
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import make_plan
from reconciler.core.reconcile import dump_live
from tests.fixtures import config, host1, three_leases
from tests.model_kernel import ModelKernel

CFG = config()


def setup_kernel():
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", "198.18.0.1/24")
    return k


def desired():
    return desired_state(CFG, three_leases(), NodeParams(public_ip=host1, underlay="eth0"))


def cycle(k):
    d = desired()
    live = FlannelOwnership(CFG).filter(dump_live(k, CFG))
    plan = make_plan(d, live)
    return plan, apply_plan(k, plan, d)


def test_one_result_per_change_in_plan_order():
    k = setup_kernel()
    plan, results = cycle(k)
    assert [r.change for r in results] == list(plan)
    assert all(r.ok for r in results)
    assert make_plan(desired(), FlannelOwnership(CFG).filter(dump_live(k, CFG))).in_sync


def test_failed_neighbour_holds_back_its_route_but_not_the_others():
    k = setup_kernel()
    k.inject("neigh", errno.EINVAL)
    plan, results = cycle(k)
    by_key = {(r.change.kind, r.change.obj.key): r for r in results}
    failed_neigh = [r for r in results if r.change.kind == "neigh" and not r.ok]
    assert len(failed_neigh) == 1 and failed_neigh[0].errno == errno.EINVAL
    gw = failed_neigh[0].change.obj.ip
    route = by_key[("route", (f"{gw}/24", 0))]
    assert not route.ok and route.skipped and "neighbour" in route.message
    assert sum(1 for r in results if r.change.kind == "route" and r.ok) == 1
    assert k.fired == ["neigh:create:EINVAL"]


def test_failed_fdb_entry_holds_back_its_route():
    k = setup_kernel()
    k.inject("fdb", errno.EINVAL)
    _, results = cycle(k)
    failed_fdb = next(r for r in results if r.change.kind == "fdb" and not r.ok)
    mac = failed_fdb.change.obj.mac
    route = next(r for r in results if r.change.kind == "route" and r.skipped)
    assert mac in route.message


def test_failed_device_creation_skips_everything_on_it():
    k = setup_kernel()
    k.inject("link", errno.EPERM, op="create")
    _, results = cycle(k)
    dev = next(r.change.obj.name for r in results if r.change.kind == "link" and not r.ok)
    on_dev = [r for r in results if r.change.kind != "link" and getattr(r.change.obj, "dev", None) == dev]
    assert on_dev and all(r.skipped for r in on_dev)


def test_delete_of_missing_object_counts_as_done():
    k = setup_kernel()
    cycle(k)
    from reconciler.core.plan import Change

    res = k.apply([Change("delete", Route("100.64.99.0/24", "100.64.99.0", "flannel.1", True)),
                   Change("delete", Neigh("flannel.1", "100.64.99.0", "02:00:00:00:00:99")),
                   Change("delete", Fdb("flannel.1", "02:00:00:00:00:99", "198.18.0.99"))])
    assert all(r.ok for r in res)


FAULTS = [
    ("link", errno.EBUSY, "create"), ("link", errno.EBUSY, "update"), ("address", errno.EINVAL, None),
    ("neigh", errno.ENOBUFS, None), ("fdb", errno.EOPNOTSUPP, None), ("route", errno.ENETDOWN, None),
    ("route", errno.EINVAL, "delete"), ("fdb", errno.EBUSY, "delete"),
]


@pytest.mark.parametrize("kind,code,op", FAULTS, ids=[f"{k}-{op}-{errno.errorcode[c]}" for k, c, op in FAULTS])
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
def test_fault_matrix_converges_once_fault_clears(kind, code, op, persistent):
    k = setup_kernel()
    # Start from a drifted kernel so that every kind of op is needed.
    cycle(k)
    k.remove_link("flannel.1")
    k.add_link(Link("flannel.1", "vxlan", 1500, "02:00:00:00:00:99", True, 1, host1, 8472, False,
                    False, "eth0"))  # MTU and MAC drift, and none of its entries
    k.remove_link("cni0")

    k.add_route(Route("100.64.9.0/24", "100.64.9.0", "flannel.1", True, 0, 73))
    k.add_fdb(Fdb("flannel.1", "02:00:00:00:09:00", "198.18.0.9"))
    k.inject(kind, code, op=op, persistent=persistent)
    for attempt in range(3):
        plan, results = cycle(k)
        if attempt == 0 and persistent:
            k.clear_faults()
        if all(r.ok for r in results) and attempt > 0:
            break
    assert k.fired, "the injected fault never fired"
    plan, results = cycle(k)
    assert plan.in_sync


class _Recording:
    """Passes each batch to the model kernel and keeps it, to see the batches' order."""

    def __init__(self, kernel):
        self.kernel, self.batches = kernel, []

    def apply(self, changes):
        self.batches.append(list(changes))
        return self.kernel.apply(changes)


#: The documented order of the phases (the module docstring and ``plan._STEPS``), written out
#: independently of the module's table: deletions, links, addresses, stale addresses,
#: neighbours and FDB entries, nexthops, routes, stale nexthops.
_ORDER = [{"delete"}, {"link"}, {"address"}, {"delete address"}, {"neigh", "fdb"}, {"nexthop"}, {"route"},
          {"delete nexthop"}]


def _group(c) -> int:
    name = c.kind if c.op != "delete" else ("delete " + c.kind if c.kind in ("address", "nexthop") else "delete")
    return next(i for i, names in enumerate(_ORDER) if name in names)


def test_changes_in_any_order_go_in_phase_batches_each_in_plan_order():
    from reconciler.core.plan import Change, Plan

    k = setup_kernel()
    d = desired()
    cold = make_plan(d, FlannelOwnership(CFG).filter(dump_live(k, CFG)))
    # Reversed, and with deletions (of objects not there yet: done) last: the
    # batches must still go phase by phase, each batch keeping the plan's order.
    deletes = [Change("delete", c.obj) for c in cold if c.kind in ("neigh", "fdb", "route")]
    plan = Plan(tuple(reversed(cold.changes)) + tuple(deletes))
    rec = _Recording(k)
    results = apply_plan(rec, plan, d)
    assert [r.change for r in results] == list(plan) and all(r.ok for r in results)
    groups = [{_group(c) for c in batch} for batch in rec.batches]
    assert all(len(g) == 1 for g in groups)
    assert [g.pop() for g in groups] == sorted({_group(c) for c in plan})
    position = {id(c): i for i, c in enumerate(plan)}
    for batch in rec.batches:
        assert [position[id(c)] for c in batch] == sorted(position[id(c)] for c in batch)
    assert sum(map(len, rec.batches)) == len(plan)
    assert make_plan(d, FlannelOwnership(CFG).filter(dump_live(k, CFG))).in_sync
