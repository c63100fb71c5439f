"""Subnet acquisition: flanneld's choice (pure), then acquire and keep against a real etcd."""
from __future__ import annotations

import random
import threading
import time
from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.agent.acquire import (Acquired, AcquireError, LeaseKeeper, OutOfSubnets, acquire_lease,
                                choose_subnet)
from reconciler.core.config import parse_network_config
from reconciler.core.errors import ConfigError, EtcdError
from reconciler.etcd.store import EtcdStore
from reconciler.core.leases import Lease, encode_lease_value, parse_lease, subnet_key

CONFIG_JSON = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
CFG = parse_network_config(CONFIG_JSON)     # SubnetLen 24, SubnetMin 10.244.1.0, SubnetMax 10.244.255.0
ME = "192.168.0.10"
MAC = "0e:00:00:00:00:0a"


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def lease(subnet: str, ip: str, mac: str | None = None, etcd_lease: int = 7) -> Lease:
    n = net(subnet)
    mac = mac or "0e:00:%02x:%02x:%02x:01" % tuple(n.network_address.packed[1:])
    return parse_lease(subnet_key(n), encode_lease_value(ip, mac, 1), etcd_lease)


def peers(first: int, last: int) -> list[Lease]:
    """Leases 10.244.<first..last>.0/24 held by other nodes."""
    return [lease(f"10.244.{i}.0/24", f"192.168.1.{i}") for i in range(first, last + 1)]


# --------------------------------------------------------------------------------------------
# choose_subnet: pure
# --------------------------------------------------------------------------------------------

def test_reuses_our_lease_by_public_ip():
    ours = lease("10.244.42.0/24", ME)
    c = choose_subnet(CFG, peers(1, 5) + [ours], ME, net("10.244.3.0/24"), random.Random(0))
    assert (c.source, c.subnet, c.lease, c.delete) == ("own", net("10.244.42.0/24"), ours, ())
    assert not c.reservation


@pytest.mark.parametrize("bad", ["10.244.0.0/24",      # below SubnetMin (flanneld skips the first subnet)
                                 "10.245.7.0/24",      # outside Network
                                 "10.244.8.0/25"])     # wrong SubnetLen
def test_incompatible_own_lease_is_deleted_and_we_carry_on(bad):
    ours = lease(bad, ME)
    c = choose_subnet(CFG, [ours], ME, None, random.Random(0))
    assert c.delete == (ours,)
    assert c.source == "random" and c.subnet != net(bad)
    # Being deleted, it no longer blocks: with /25 the /24 around it is free again.
    c = choose_subnet(CFG, [ours], ME, net("10.244.8.0/24"), random.Random(0))
    assert (c.source, c.subnet) == ("previous", net("10.244.8.0/24"))


def test_incompatible_reservation_is_left_alone():
    reserved = lease("10.244.0.0/24", ME, etcd_lease=0)
    c = choose_subnet(CFG, [reserved], ME, None, random.Random(0))
    assert c.delete == () and c.source == "random"


def test_compatible_reservation_wins_over_an_expiring_own_lease():
    expiring = lease("10.244.2.0/24", ME)
    reserved = lease("10.244.9.0/24", ME, mac="0e:00:00:00:00:99", etcd_lease=0)
    c = choose_subnet(CFG, [expiring, reserved], ME, None, random.Random(0))
    assert (c.source, c.subnet, c.reservation) == ("own", net("10.244.9.0/24"), True)


def test_previous_subnet_reused_when_free():
    c = choose_subnet(CFG, peers(1, 5), ME, net("10.244.77.0/24"), random.Random(0))
    assert (c.source, c.subnet) == ("previous", net("10.244.77.0/24"))


@pytest.mark.parametrize("taken", [
    lease("10.244.3.0/24", "192.168.1.99"),                  # an ordinary lease
    lease("10.244.3.0/24", "192.168.1.99", etcd_lease=0),    # a reservation for someone else
    lease("10.244.3.0/25", "192.168.1.99"),                  # overlapping, other length
])
def test_previous_subnet_not_reused_when_taken(taken):
    c = choose_subnet(CFG, [taken], ME, net("10.244.3.0/24"), random.Random(0))
    assert c.source == "random" and c.subnet != net("10.244.3.0/24")
    assert not c.subnet.overlaps(taken.subnet)


def test_previous_subnet_not_reused_when_incompatible():
    for prev in ("10.244.0.0/24", "10.9.3.0/24", "10.244.3.0/25"):
        assert choose_subnet(CFG, [], ME, net(prev), random.Random(0)).source == "random"


def test_occupied_keys_block_like_leases():
    c = choose_subnet(CFG, [], ME, net("10.244.3.0/24"), random.Random(0), occupied=[net("10.244.3.0/24")])
    assert c.source == "random" and c.subnet != net("10.244.3.0/24")
    # A short garbage key covers many candidates at once.
    c = choose_subnet(CFG, [], ME, None, random.Random(0), occupied=[net("10.244.0.0/17")])
    assert c.subnet.network_address >= net("10.244.128.0/24").network_address


def test_random_among_first_100_free_is_deterministic_with_a_seed():
    taken = peers(1, 10) + peers(12, 12)      # 11 and 13.. are free
    free = [net("10.244.11.0/24")] + [net(f"10.244.{i}.0/24") for i in range(13, 112)]
    assert len(free) == 100
    for seed in range(50):
        expected = free[random.Random(seed).randrange(100)]
        assert choose_subnet(CFG, taken, ME, None, random.Random(seed)).subnet == expected
    picks = {choose_subnet(CFG, taken, ME, None, random.Random(s)).subnet for s in range(200)}
    assert picks <= set(free) and len(picks) > 50


def test_out_of_subnets():
    small = parse_network_config('{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}')  # /30s: .4 .8 .12
    held = [lease(f"10.0.0.{i}/30", f"192.168.1.{i}") for i in (4, 8, 12)]
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        choose_subnet(small, held, ME, None, random.Random(0))
    assert choose_subnet(small, held[:2], ME, None, random.Random(0)).subnet == net("10.0.0.12/30")


def test_ipv6_only_is_refused_clearly():
    v6only = parse_network_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48",'
                                  '"Backend":{"Type":"vxlan"}}')
    with pytest.raises(ConfigError, match="IPv6-only is not supported with etcd.*0.0.0.0"):
        choose_subnet(v6only, [], ME, None, random.Random(0))


def test_a_free_subnet_is_found_past_5000_taken():
    """Correct at scale; how fast is ``benchmarks/bench_core.py``'s (a ratio between sizes)."""
    big = parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    leases = [parse_lease(f"10.{i >> 8}.{i & 255}.0-24",
                          encode_lease_value(f"172.16.{i >> 8}.{i & 255}", "0e:00:00:00:%02x:%02x" % (i >> 8, i & 255), 1),
                          7) for i in range(1, 5001)]
    c = choose_subnet(big, leases, ME, net("10.0.3.0/24"), random.Random(1))
    assert c.source == "random"
    assert net("10.19.137.0/24").network_address <= c.subnet.network_address  # above the 5,000 taken


# --------------------------------------------------------------------------------------------
# acquire_lease and LeaseKeeper: real etcd
# --------------------------------------------------------------------------------------------

def flanneld_value(ip: str, mac: str) -> str:
    """flanneld's bytes, written out literally (docs/flannel-formats.md section 3)."""
    return '{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}' % (
        ip, mac)


@pytest.fixture
def store(etcd_store):
    etcd_store.put_config(CONFIG_JSON)
    return etcd_store


@pytest.mark.etcd
def test_three_agents_race_for_distinct_subnets(store, etcd_shared):
    agents = [(f"192.168.0.{i}", f"0e:00:00:00:00:{i:02x}") for i in (1, 2, 3)]
    barrier = threading.Barrier(len(agents))
    results: dict[str, Acquired] = {}
    errors: list[BaseException] = []

    def agent(ip: str, mac: str) -> None:
        try:
            with EtcdStore([etcd_shared.endpoint], prefix=store.prefix, timeout=3.0) as own:
                barrier.wait()
                # The same seed for all: every agent goes for the same subnet first.
                results[ip] = acquire_lease(own, CFG, ip, mac, None, random.Random(7))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=a) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len({r.subnet for r in results.values()}) == 3
    assert len({r.lease_id for r in results.values()}) == 3
    for ip, mac in agents:
        got = results[ip]
        kv = store.get(got.key)
        assert got.key == store.subnets_prefix + subnet_key(got.subnet)
        assert kv.value == got.value == flanneld_value(ip, mac)
        assert kv.lease == got.lease_id and not got.reservation
        assert 86390 <= store.time_to_live(got.lease_id) <= 86400
        assert CFG.subnet_min <= got.subnet.network_address <= CFG.subnet_max


class StealFirstCreate:
    """A store on which another node wins the first create race."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self.stolen: list[str] = []
        self.granted: list[int] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def grant(self, ttl: int) -> int:
        lease_id = self._store.grant(ttl)
        self.granted.append(lease_id)
        return lease_id

    def create_if_absent(self, key: str, value: str, lease_id: int) -> bool:
        if not self.stolen:
            self.stolen.append(key)
            self._store.put(key, flanneld_value("192.168.9.9", "0e:00:00:00:09:09"))
        return self._store.create_if_absent(key, value, lease_id)


@pytest.mark.etcd
def test_lost_race_relists_and_retries(store):
    spy = StealFirstCreate(store)
    got = acquire_lease(spy, CFG, ME, MAC, net("10.244.5.0/24"), random.Random(0))
    assert spy.stolen == [store.subnets_prefix + "10.244.5.0-24"]
    assert got.subnet != net("10.244.5.0/24")
    assert store.get(spy.stolen[0]).value == flanneld_value("192.168.9.9", "0e:00:00:00:09:09")  # untouched
    assert store.get(got.key).value == flanneld_value(ME, MAC)
    lost, won = spy.granted
    assert store.time_to_live(lost) == -1          # the losing grant was revoked, as flanneld does
    assert won == got.lease_id


@pytest.mark.etcd
def test_gives_up_after_max_tries(store):
    class AlwaysLose(StealFirstCreate):
        def create_if_absent(self, key, value, lease_id):
            self._store.put(key, flanneld_value("192.168.9.9", "0e:00:00:00:09:09"))
            return self._store.create_if_absent(key, value, lease_id)

    with pytest.raises(AcquireError, match="3 times"):
        acquire_lease(AlwaysLose(store), CFG, ME, MAC, None, random.Random(0), max_tries=3)


@pytest.mark.etcd
def test_restart_with_same_mac_keeps_lease_and_bytes(store):
    first = acquire_lease(store, CFG, ME, MAC, None, random.Random(1))
    rev = store.get(first.key).mod_revision
    again = acquire_lease(store, CFG, ME, MAC, None, random.Random(2))
    assert (again.subnet, again.lease_id, again.value) == (first.subnet, first.lease_id, first.value)
    assert store.get(first.key).mod_revision == rev   # no PUT: peers see nothing


@pytest.mark.etcd
def test_restart_with_new_mac_rewrites_value_with_fresh_lease(store):
    first = acquire_lease(store, CFG, ME, MAC, None, random.Random(1))
    new_mac = "0e:00:00:00:00:bb"
    again = acquire_lease(store, CFG, ME, new_mac, None, random.Random(2))
    assert again.subnet == first.subnet and again.lease_id != first.lease_id
    kv = store.get(again.key)
    assert kv.value == flanneld_value(ME, new_mac) and kv.lease == again.lease_id
    assert 86390 <= store.time_to_live(again.lease_id) <= 86400


@pytest.mark.etcd
def test_a_restart_takes_back_its_previous_subnet_from_a_value_nobody_can_parse(store):
    """Garbage written over our key while the agent was down names no other owner: the restart
    takes the subnet from subnet.env back instead of moving the node."""
    key = store.subnets_prefix + "10.244.5.0-24"
    store.put(key, "garbage{")
    got = acquire_lease(store, CFG, ME, MAC, net("10.244.5.0/24"), random.Random(0))
    assert (got.subnet, got.key) == (net("10.244.5.0/24"), key)
    kv = store.get(key)
    assert kv.value == flanneld_value(ME, MAC) and kv.lease == got.lease_id
    assert 86390 <= store.time_to_live(got.lease_id) <= 86400
    # Another node's valid lease there is a different matter: it is left to it.
    other = store.subnets_prefix + "10.244.6.0-24"
    store.put(other, flanneld_value("192.168.7.7", "0e:00:00:00:07:07"))
    moved = acquire_lease(store, CFG, "192.168.0.11", "0e:00:00:00:00:0b", net("10.244.6.0/24"), random.Random(0))
    assert moved.subnet != net("10.244.6.0/24")
    assert store.get(other).value == flanneld_value("192.168.7.7", "0e:00:00:00:07:07")


@pytest.mark.etcd
def test_incompatible_own_lease_is_deleted(store):
    old_key = store.subnets_prefix + "10.244.0.0-24"     # below SubnetMin
    store.put(old_key, flanneld_value(ME, MAC), store.grant(600))
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    assert store.get(old_key) is None
    assert got.subnet != net("10.244.0.0/24")


@pytest.mark.etcd
def test_reservation_stays_leaseless(store):
    key = store.subnets_prefix + "10.244.200.0-24"
    store.put(key, flanneld_value(ME, "0e:00:00:00:00:01"))      # operator's reservation: old MAC, no lease
    got = acquire_lease(store, CFG, ME, MAC, net("10.244.3.0/24"), random.Random(0))
    assert got == Acquired(net("10.244.200.0/24"), key, 0, flanneld_value(ME, MAC), True, 0)
    kv = store.get(key)
    assert (kv.value, kv.lease) == (flanneld_value(ME, MAC), 0)  # new MAC written, still lease 0

    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(0), now=0.0)
    assert keeper.tick(1e6) == got
    assert store.get(key).lease == 0


@pytest.mark.etcd
def test_keeper_schedule_with_a_fake_clock(store):
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))

    calls: list[str] = []

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(store, name)

    keeper = LeaseKeeper(Counting(), CFG, ME, MAC, got, random.Random(0), now=1000.0)
    assert keeper.next_due == 1000.0 + 3600           # hourly for the 24 h TTL
    assert keeper.tick(1000.0 + 3599) == got and calls == []
    assert keeper.tick(1000.0 + 3600).subnet == got.subnet
    assert calls == ["get", "refresh"]                 # a keepalive, no PUT
    assert keeper.next_due == 1000.0 + 7200
    short = LeaseKeeper(store, CFG, ME, MAC, Acquired(got.subnet, got.key, got.lease_id, got.value, False, 60),
                        random.Random(0), now=0.0, ttl=60)
    assert short.next_due == 20.0                      # ttl / 3 when that is sooner


@pytest.mark.etcd
def test_keeper_keepalive_resets_ttl(store):
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0), ttl=30)
    rev = store.get(got.key).mod_revision
    time.sleep(1.2)   # real time: etcd's TTL counts down in seconds, nothing to wait on instead
    assert store.time_to_live(got.lease_id) < 30
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(0), now=0.0, ttl=30)
    assert keeper.tick(10.0) == got
    assert store.time_to_live(got.lease_id) >= 29
    assert store.get(got.key).mod_revision == rev      # no write


@pytest.mark.etcd
def test_keeper_reacquires_same_subnet_when_key_deleted(store):
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(99), now=0.0)
    store.delete(got.key)
    now = keeper.tick(3600.0)
    assert now.subnet == got.subnet and now.key == got.key
    assert now.lease_id != got.lease_id
    assert store.get(got.key).value == flanneld_value(ME, MAC)
    assert 86390 <= store.time_to_live(now.lease_id) <= 86400


@pytest.mark.etcd
def test_keeper_reacquires_same_subnet_when_lease_expired(store):
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(99), now=0.0)
    store.revoke(got.lease_id)                          # what expiry does: key gone with its lease
    assert keeper.ensure().subnet == got.subnet


@pytest.mark.parametrize("bad", ["garbage{", flanneld_value("192.168.7.7", "0e:00:00:00:07:07")],
                         ids=["unparseable", "foreign"])
@pytest.mark.etcd
def test_keeper_writes_ours_back_over_a_bad_write_in_place(store, bad):
    """A value written over our existing key (nobody acquired it: flanneld's acquisition is a
    create-if-absent, which fails on an existing key) is not a reason to renumber the node."""
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(5), now=0.0)
    store.put(got.key, bad)                             # etcdctl put <our key> ..., no lease
    now = keeper.ensure()
    assert (now.subnet, now.key) == (got.subnet, got.key)
    kv = store.get(got.key)
    assert kv.value == flanneld_value(ME, MAC)
    assert kv.lease == got.lease_id                     # re-attached to our living etcd lease
    assert keeper.overwritten == {("unparseable" if bad == "garbage{" else "foreign"): 1}
    assert keeper.not_ours is None
    assert [kv.key for kv in store.snapshot().kvs if ME in kv.value] == [got.key]   # no second lease


@pytest.mark.etcd
def test_keeper_says_our_key_is_not_ours_while_a_write_back_loses_the_race(store):
    """Written again between our read and our write-back: nothing is overwritten blindly, the
    key is reported not ours, and the next check (the watch shows the second write) repairs it."""
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))

    class WrittenAgainMeanwhile:
        def __init__(self):
            self.once = True

        def __getattr__(self, name):
            return getattr(store, name)

        def put_if_value(self, key, expected, new, lease_id):
            if self.once:
                self.once = False
                store.put(key, "garbage again{")
            return store.put_if_value(key, expected, new, lease_id)

    keeper = LeaseKeeper(WrittenAgainMeanwhile(), CFG, ME, MAC, got, random.Random(5), now=0.0)
    store.put(got.key, "garbage{")
    assert keeper.ensure() == got
    assert store.get(got.key).value == "garbage again{"      # the second write was not overwritten blindly
    assert keeper.not_ours and got.key in keeper.not_ours
    assert keeper.ensure().subnet == got.subnet
    assert store.get(got.key).value == flanneld_value(ME, MAC) and keeper.not_ours is None
    assert keeper.overwritten == {"unparseable": 2}


@pytest.mark.etcd
def test_keeper_leaves_our_key_to_a_node_that_created_it_after_it_was_gone(store):
    """Deleted, then created by another node: that node acquired a subnet that was free (the
    only way flanneld can get it) and uses it already; it keeps it and we move."""
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(5), now=0.0)
    theirs = flanneld_value("192.168.7.7", "0e:00:00:00:07:07")
    store.delete(got.key)
    assert store.create_if_absent(got.key, theirs, store.grant(600))   # flanneld's acquisition
    now = keeper.tick(3600.0)
    assert now.subnet != got.subnet
    assert store.get(got.key).value == theirs           # left alone
    assert store.get(now.key).value == flanneld_value(ME, MAC)
    assert keeper.overwritten == {"taken": 1}


@pytest.mark.etcd
def test_keeper_updates_mac(store):
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(0), now=0.0)
    keeper.update_vtep_mac("0e:00:00:00:00:cc")
    now = keeper.tick(1.0)
    assert now.subnet == got.subnet
    assert store.get(got.key).value == flanneld_value(ME, "0e:00:00:00:00:cc")


def test_keeper_retries_a_minute_later_after_an_etcd_error():
    class Down:
        subnets_prefix = "/coreos.com/network/subnets/"

        def get(self, key):
            raise EtcdError("etcd get via http://127.0.0.1:1: unavailable")

    got = Acquired(net("10.244.1.0/24"), "/coreos.com/network/subnets/10.244.1.0-24", 5,
                   flanneld_value(ME, MAC), False, 86400)
    keeper = LeaseKeeper(Down(), CFG, ME, MAC, got, random.Random(0), now=0.0)
    with pytest.raises(EtcdError):
        keeper.tick(3600.0)
    assert keeper.next_due == 3660.0 and isinstance(keeper.last_error, EtcdError)
    assert keeper.tick(3630.0) == got                   # not due yet: no call, no error


class _ClockedStore:
    """An etcd lease that expires on a fake clock: ``refresh`` resets it to the full TTL and
    records how much was left, which is what flanneld's -subnet-lease-renew-margin bounds."""

    def __init__(self, key: str, value: str, ttl: int) -> None:
        self.key, self.value, self.ttl = key, value, ttl
        self.now = 0.0
        self.expires = float(ttl)
        self.left_at_renewal: list[float] = []

    def get(self, key):
        from reconciler.core.leases import RawKV

        assert key == self.key and self.now < self.expires, "the lease expired"
        return RawKV(key, self.value, lease=7)

    def refresh(self, lease_id: int) -> int:
        self.left_at_renewal.append(self.expires - self.now)
        self.expires = self.now + self.ttl
        return self.ttl


@pytest.mark.parametrize("margin_minutes", [1, 60, 600, 1439])
def test_renew_margin_holds_as_flanneld_means_it(margin_minutes):
    """Every renewal happens while at least the margin is left on the 24 h lease (flanneld renews at
    expiry - margin); 1439 minutes means a keepalive every minute."""
    from reconciler.agent.acquire import SUBNET_TTL, lease_value

    value = lease_value(CFG, ME, MAC)
    key = "/coreos.com/network/subnets/10.244.7.0-24"
    store = _ClockedStore(key, value, SUBNET_TTL)
    got = Acquired(IPv4Network("10.244.7.0/24"), key, 7, value, False, SUBNET_TTL)
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(0), now=0.0, renew_margin=margin_minutes * 60.0)
    step = 30.0
    while store.now < 3 * SUBNET_TTL:
        store.now += step
        keeper.tick(store.now)
    assert len(store.left_at_renewal) >= 3
    assert min(store.left_at_renewal) >= margin_minutes * 60.0 - step
    if margin_minutes == 1439:
        assert max(SUBNET_TTL - left for left in store.left_at_renewal) <= 60.0 + step


@pytest.mark.etcd
def test_keeper_rewrites_our_lease_in_place_when_the_public_ip_moves(store):
    """The underlay's address changed: same key, same etcd lease, the new PublicIP; flanneld's
    order would have taken another subnet and left the old lease to expire."""
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(99), now=0.0)
    keeper.update_public_ip("192.168.0.77")
    now = keeper.tick(1.0)
    assert (now.key, now.subnet, now.lease_id) == (got.key, got.subnet, got.lease_id)
    assert store.get(got.key).value == flanneld_value("192.168.0.77", MAC)
    assert [kv.key for kv in store.snapshot().kvs if "/subnets/" in kv.key] == [got.key]


@pytest.mark.etcd
def test_a_moved_public_ip_meets_a_bad_write_in_place_and_writes_ours_back(store):
    """The compare-and-swap of a moved PublicIP loses to a value someone wrote over our key in
    place; that is a bad write (nobody acquires an existing key), so ours, with the new PublicIP,
    is written back over it and counted, and the node keeps its subnet."""
    got = acquire_lease(store, CFG, ME, MAC, None, random.Random(0))
    keeper = LeaseKeeper(store, CFG, ME, MAC, got, random.Random(99), now=0.0)
    theirs = flanneld_value("192.168.0.99", "0e:00:00:00:00:99")
    store.put(got.key, theirs, got.lease_id)
    keeper.update_public_ip("192.168.0.77")
    now = keeper.tick(1.0)
    assert (now.key, now.subnet) == (got.key, got.subnet)
    assert store.get(got.key).value == flanneld_value("192.168.0.77", MAC)
    assert keeper.overwritten["foreign"] == 1


@given(st.ip_addresses(v=4), st.sampled_from(["{}", "0{}", " {}", "{} ", "{}.0", "00{}", "+{}"]), st.booleans())
def test_our_public_ip_found_by_text_is_found_by_address(addr, spelling, last_octet):
    """choose_subnet finds our leases by comparing PublicIP texts: the same answer as comparing
    addresses, whatever the spelling a lease carries (IPv4Address accepts only one spelling)."""
    from reconciler.agent.acquire import _same_ip

    octets = str(addr).split(".")
    text = ".".join(octets[:3] + [spelling.format(octets[3])]) if last_octet else spelling.format(addr)
    import dataclasses

    # Past parse_lease's own checks (which reject most of these spellings): the comparison alone.
    mine = dataclasses.replace(lease("10.244.5.0/24", "198.19.0.1"), public_ip=text)
    others = [lease("10.244.6.0/24", "198.19.0.9" if str(addr) != "198.19.0.9" else "198.19.0.8")]
    choice = choose_subnet(CFG, others + [mine], str(addr), None, random.Random(0))
    assert (choice.source == "own") == _same_ip(text, addr)
