"""The agent's inbox: typed items between its threads and the worker, taken oldest first."""
from __future__ import annotations

import pytest

from reconciler.agent.inbox import Inbox, KernelBatch, LeaseEvent, Listing, Pin
from reconciler.core.leases import RawKV
from reconciler.etcd.rpc import WatchEvent


def test_items_come_out_typed_in_the_order_they_went_in():
    inbox = Inbox()
    kv = RawKV("/coreos.com/network/subnets/100.64.2.0-24", "{}", mod_revision=7)
    inbox.put_event(WatchEvent("put", kv, 7), at=1.0)
    inbox.put_listing([kv], at=2.0, revision=9, after_rollback=True)
    inbox.put_pin(kv.key, at=3.0)
    assert inbox.counts() == {"lease_items": 3, "kernel_items": 0}
    items = list(inbox.take_leases())
    assert [type(i) for i in items] == [LeaseEvent, Listing, Pin]
    assert items[0].event.revision == 7 and items[0].at == 1.0
    assert items[1] == Listing([kv], 2.0, 9, True)
    assert items[2].key == kv.key
    assert inbox.counts()["lease_items"] == 0 and list(inbox.take_leases()) == []


def test_a_listing_from_a_caller_defaults_to_no_revision_and_no_rollback():
    inbox = Inbox()
    assert not inbox.listed
    inbox.put_listing([], at=0.0)
    assert inbox.listed
    (item,) = inbox.take_leases()
    assert item.revision == 0 and item.after_rollback is False
    assert inbox.listed     # taking the listing out does not make the agent unlisted again


def test_items_queued_while_taking_are_taken_too():
    inbox = Inbox()
    inbox.put_pin("a", at=0.0)
    taken = []
    for item in inbox.take_leases():
        taken.append(item.key)
        if item.key == "a":
            inbox.put_pin("b", at=1.0)
    assert taken == ["a", "b"]


def test_kernel_batches_keep_a_lost_batch_apart():
    inbox = Inbox()
    inbox.put_kernel([("link", "up")])
    inbox.put_kernel(None)
    assert list(inbox.take_kernel()) == [KernelBatch([("link", "up")]), KernelBatch(None)]
    assert inbox.counts()["kernel_items"] == 0


def test_items_are_immutable():
    item = Pin("a", 0.0)
    with pytest.raises(AttributeError):
        item.key = "b"  # type: ignore[misc]
