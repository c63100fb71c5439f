"""The data-plane conditions, decided from plain facts; the ENODEV burst said once."""
from __future__ import annotations

import errno

from reconciler.agent.failures import failure_lines
from reconciler.core.health import CONDITIONS, DataPlaneFacts, conditions, failing
from reconciler.core.model import Fdb, Link, Route
from reconciler.core.plan import Change, OpResult


def test_unknown_facts_are_fine_and_every_condition_is_reported_once():
    conds = conditions(DataPlaneFacts(device="flannel.1"))
    assert [c.name for c in conds] == list(CONDITIONS)
    assert not failing(conds)


def test_each_broken_fact_fails_its_own_condition_with_a_reason():
    facts = DataPlaneFacts(device="flannel.1", device_present=False, twins=("flx0",), forwarding=False,
                           underlay="eth0", underlay_addresses=("198.18.0.51",), local="198.18.0.1",
                           underlay_mtu=1400, planned_mtu=1500, bridge="cni0", bridge_route=False,
                           bridge_subnet="100.64.1.0/24")
    reasons = {c.name: c.reason for c in failing(conditions(facts))}
    assert reasons == {
        "vxlan-device": "flannel.1 is missing and cannot be created: flx0 holds its VNI and port (renamed by "
                        "hand?); delete or rename it back to flannel.1",
        "forwarding": "net.ipv4.ip_forward is 0: pod traffic is not forwarded (sysctl -w net.ipv4.ip_forward=1)",
        "underlay-address": "the underlay eth0 now has 198.18.0.51, but flannel.1's local and our lease say "
                            "198.18.0.1: peers send to an address this node no longer has",
        "underlay-mtu": "the underlay eth0's MTU is 1400, below the 1500 flannel.1's MTU was derived from: "
                        "large packets are dropped",
        "bridge-route": "cni0 has no route to 100.64.1.0/24: local pods are cut off",
    }


def test_the_facts_that_hold_fail_nothing():
    facts = DataPlaneFacts(device="flannel.1", device_present=True, forwarding=True, underlay="eth0",
                           underlay_addresses=("198.18.0.9", "198.18.0.1"), local="198.18.0.1",
                           underlay_mtu=9000, planned_mtu=1500, bridge="cni0", bridge_route=True)
    assert not failing(conditions(facts))


def _fail(obj, code: int, message: str) -> OpResult:
    return OpResult(Change("create", obj), ok=False, errno=code, message=message)


def test_an_enodev_burst_is_one_line_per_device_and_asks_for_a_dump():
    burst = [_fail(Fdb("flannel.1", f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", f"198.18.1.{i % 250}"),
                   errno.ENODEV, f"fdb {i}: Cannot find device (ENODEV)") for i in range(290)]
    other = _fail(Route("100.64.9.0/24", "100.64.9.0", "flannel.1", True), errno.EINVAL, "route: EINVAL")
    lines, gone = failure_lines(burst + [other])
    assert gone
    assert lines == ["route: EINVAL",
                     "290 writes onto flannel.1 failed: the device is gone (ENODEV; first: fdb 0: Cannot find "
                     "device (ENODEV)); re-reading the kernel and creating it again"]


def test_other_failures_are_one_line_each():
    lines, gone = failure_lines([_fail(Link("flannel.1", "vxlan"), errno.EEXIST, "link add flannel.1: EEXIST")])
    assert (lines, gone) == (["link add flannel.1: EEXIST"], False)
