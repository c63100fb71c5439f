"""Start-up does each thing once: one listing of the leases feeds the VTEP MAC choice,
acquisition and the first cycle, and the watch starts right after that listing's revision.

Against a real etcd and the model kernel, as test_daemon.py; the store is wrapped to count the
calls start-up makes, and to write between the listing and the watch the way another node
might (docs/incremental.md, "Start-up")."""
from __future__ import annotations

import collections
import logging
import random

from reconciler.agent.acquire import SubnetTable, acquire_lease
from reconciler.core.config import parse_network_config
from reconciler.core.leases import RawKV, encode_lease_value
from reconciler.incremental.lease_index import LeaseIndex
from tests.test_daemon import CONFIG, MAC2, MAC3, ME, node_kernel, put_peer, routes, start_agent, wait_for

__all__ = ["start_agent"]   # the fixture, imported for the tests below

MAC_STALE = "0a:58:64:40:09:00"
MAC_MINE = "0a:58:64:40:64:00"


class Counting:
    """The store, counting the calls made through it; ``after_listing`` runs once, right after
    the first listing returned (before the agent can have started its watch)."""

    def __init__(self, store, after_listing=None):
        self._store = store
        self.calls: collections.Counter = collections.Counter()
        self._after_listing = after_listing

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            result = attr(*args, **kwargs)
            if name == "snapshot" and self._after_listing is not None:
                hook, self._after_listing = self._after_listing, None
                hook()
            return result
        return counted


def test_start_up_lists_the_leases_once(etcd_store, start_agent):
    etcd_store.put_config(CONFIG)
    put_peer(etcd_store, "100.64.2.0-24", "198.18.0.2", MAC2)
    store = Counting(etcd_store)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    assert store.calls["snapshot"] == 1, store.calls
    assert "100.64.2.0/24" in routes(kernel)
    own = agent.agent.keeper.current
    assert agent.agent.index.pinned == own.key and own.key in agent.agent.index.valid


def test_changes_between_the_listing_and_the_watch_are_not_lost(etcd_store, start_agent):
    """A peer joins and another leaves after the one listing, before the watch exists: the
    watch starts from the listing's revision + 1, so both arrive."""
    etcd_store.put_config(CONFIG)
    gone = put_peer(etcd_store, "100.64.2.0-24", "198.18.0.2", MAC2)

    def meanwhile():
        put_peer(etcd_store, "100.64.3.0-24", "198.18.0.3", MAC3)
        etcd_store.delete(gone)

    store = Counting(etcd_store, after_listing=meanwhile)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    wait_for(lambda: "100.64.3.0/24" in routes(kernel) and "100.64.2.0/24" not in routes(kernel),
             what="the peer that joined programmed, the one that left removed")
    assert store.calls["snapshot"] == 1, store.calls


class Ordered(Counting):
    """``Counting``, and the order in which etcd registered the watch and acquisition wrote."""

    WRITES = {"create_if_absent", "put_if_value", "delete_if_value", "grant", "put", "delete"}

    def __init__(self, store):
        super().__init__(store)
        self.order: list[str] = []

    def __getattr__(self, name):
        attr = super().__getattr__(name)
        if name == "watch":
            def watch(*args, created=None, **kwargs):
                def registered():
                    self.order.append("watch registered")
                    if created is not None:
                        created()
                return attr(*args, created=registered, **kwargs)
            return watch
        if name in self.WRITES:
            def write(*args, **kwargs):
                self.order.append(name)
                return attr(*args, **kwargs)
            return write
        return attr


def test_the_watch_is_registered_before_acquisition_writes(etcd_store, start_agent):
    """etcd sends a write at once only to a watch registered before it; one registered later
    is caught up every 100 ms, and the first cycle would wait that long for our own lease."""
    etcd_store.put_config(CONFIG)
    put_peer(etcd_store, "100.64.2.0-24", "198.18.0.2", MAC2)
    store = Ordered(etcd_store)
    agent = start_agent(store, node_kernel())
    agent.ready()
    assert store.order[0] == "watch registered" and "create_if_absent" in store.order, store.order
    assert agent.agent.etcd.echo.is_set()


def test_an_echo_that_overtakes_acquisition_still_counts(etcd_store, tmp_path):
    """The watch runs before acquisition says what it wrote: a write that comes back first is
    remembered, and a listing taken before acquisition ends no wait."""
    from ipaddress import IPv4Network

    from reconciler.agent.acquire import Acquired
    from reconciler.agent.daemon import Agent, AgentOptions

    etcd_store.put_config(CONFIG)
    agent = Agent(etcd_store, node_kernel(), AgentOptions(subnet_file=str(tmp_path / "subnet.env")))
    ours = Acquired(IPv4Network("100.64.100.0/24"), f"{etcd_store.subnets_prefix}100.64.100.0-24", 5,
                    encode_lease_value(ME, MAC2, 1), False, deleted=(f"{etcd_store.subnets_prefix}100.64.7.0-26",))
    agent.etcd._echo_of(ours.key)           # our put, back before acquisition returned
    agent.etcd.relist()                     # before acquisition: it cannot show acquisition's writes
    assert not agent.etcd.echo.is_set()
    agent.etcd.await_echo(None, ours)
    assert not agent.etcd.echo.is_set()     # the deletion is still to come
    agent.etcd._echo_of(ours.deleted[0])
    assert agent.etcd.echo.is_set()


def test_our_own_write_coming_back_is_not_a_reason_to_check_our_key(etcd_store, start_agent):
    """Acquisition created our key after the listing; the watch brings that put back.  It is
    what the keeper holds: folded in like any event, no keepalive or re-read for it."""
    etcd_store.put_config(CONFIG)
    put_peer(etcd_store, "100.64.2.0-24", "198.18.0.2", MAC2)
    store = Counting(etcd_store)
    agent = start_agent(store, node_kernel())
    agent.ready()
    agent.resyncs(2)
    assert store.calls["refresh"] == 0, store.calls
    assert agent.agent.metrics.get("flannel_reconciler_cycles_total", trigger="lease", outcome="no-lease") in (None, 0)


def test_the_first_cycle_waits_for_the_deletion_acquisition_made(etcd_store, start_agent, caplog):
    """Our reservation is reused as it is (no write), and our old expiring lease, which no
    longer fits the config (a /26 in a /24 network), is deleted by acquisition after the
    listing.  The first cycle waits for the watch to show that deletion, so the old lease is
    never reported as a skipped lease of this node."""
    etcd_store.put_config(CONFIG)
    mine = f"{etcd_store.subnets_prefix}100.64.100.0-24"
    etcd_store.put(mine, encode_lease_value(ME, MAC_MINE, 1))
    stale = f"{etcd_store.subnets_prefix}100.64.120.0-26"
    etcd_store.put(stale, encode_lease_value(ME, MAC_STALE, 1), etcd_store.grant(600))
    caplog.set_level(logging.INFO, logger="flannel_reconciler")
    store = Counting(etcd_store)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    assert etcd_store.get(stale) is None
    assert agent.agent.keeper.current.key == mine and store.calls["put"] == 0, store.calls
    assert stale not in agent.agent.index.skipped
    said = [r.getMessage() for r in caplog.records if "100.64.120.0-26" in r.getMessage()]
    assert not any(m.startswith("skipped lease") for m in said), said
    assert store.calls["snapshot"] == 1, store.calls


# ------------------------------------------------------------------ the listing, parsed once

def _kvs(base: str) -> list[RawKV]:
    return [RawKV(base + "100.64.2.0-24", encode_lease_value("198.18.0.2", MAC2, 1), 5, 10),
            RawKV(base + "100.64.3.0-26", encode_lease_value("198.18.0.3", MAC3, 1), 6, 11),  # does not fit
            RawKV(base + "100.64.4.0-24", "not json", 7, 12),                                  # taken all the same
            RawKV(base + "junk", "{}", 0, 13)]


def test_a_listing_parsed_by_the_lease_index_is_the_one_acquisition_would_parse():
    base = "/coreos.com/network/subnets/"
    config = parse_network_config(CONFIG)
    index = LeaseIndex(config, "/coreos.com/network")
    kvs = _kvs(base)
    index.replace_all(kvs)
    assert SubnetTable.of(index.kvs(), base, index.parsed_any) == SubnetTable.of(list(reversed(kvs)), base)
    assert index.parsed_any(base + "100.64.3.0-26") is not None       # parsed although it does not fit
    assert index.parsed(base + "100.64.3.0-26") is None


class _NoListing:
    """A store that must not be listed: acquisition's first try takes the listing it is given."""

    subnets_prefix = "/coreos.com/network/subnets/"

    def __init__(self):
        self.created: list[str] = []

    def snapshot(self):
        raise AssertionError("listed again")

    def grant(self, ttl):
        return 99

    def create_if_absent(self, key, value, lease_id):
        self.created.append(key)
        return True

    def get(self, key):
        return None


def test_acquisition_chooses_from_the_listing_it_is_given():
    store = _NoListing()
    config = parse_network_config(CONFIG)
    listing = SubnetTable.of(_kvs(store.subnets_prefix), store.subnets_prefix)
    got = acquire_lease(store, config, ME, MAC2.replace("02", "99"), None, random.Random(1), listing=listing)
    assert store.created == [got.key]
    assert got.subnet.network_address.packed[2] >= 100      # SubnetMin of CONFIG, none of the listed


def test_a_listing_after_acquisition_ends_the_wait_for_its_writes(etcd_store, tmp_path):
    """Should the watch have to re-list (its start revision compacted away) before it brought
    acquisition's writes back, that listing shows them: the first cycle waits no longer."""
    from reconciler.agent.acquire import Acquired
    from reconciler.agent.daemon import Agent, AgentOptions
    from ipaddress import IPv4Network

    etcd_store.put_config(CONFIG)
    agent = Agent(etcd_store, node_kernel(), AgentOptions(subnet_file=str(tmp_path / "subnet.env")))
    ours = Acquired(IPv4Network("100.64.100.0/24"), f"{etcd_store.subnets_prefix}100.64.100.0-24", 5,
                    encode_lease_value(ME, MAC2, 1), False)
    agent.etcd.await_echo(None, ours)
    assert not agent.etcd.echo.is_set()
    agent.etcd.relist()
    assert agent.etcd.echo.is_set()
