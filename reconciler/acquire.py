"""This node's subnet lease, acquired and kept the flanneld way, minus its crashes.

* ``choose_subnet`` is pure: flanneld's order (docs/flannel-formats.md section 1)
  -- our lease by PublicIP, else the previous subnet from subnet.env, else a
  random pick among the first 100 free subnets.
* ``acquire_lease`` applies a choice to etcd with compare-and-set writes and
  re-lists after a lost race (flanneld exits with status 1 there).
* ``LeaseKeeper`` keeps the lease alive with keepalives on a timer driven by
  the caller's clock, and re-acquires -- the same subnet when it is still free
  -- when the key vanished or another node took it (flanneld exits there).

Where we differ from flanneld, on purpose:

* A key with etcd lease 0 and our PublicIP is a reservation and stays one:
  we rewrite its value (new VtepMAC) with lease 0, never attach a TTL.
* Renewal is a keepalive, not Grant + unconditional Put: peers see the same
  bytes and no watch event, instead of one PUT per node per day cluster-wide.
* Every write over an existing key compares the value we read first, so a key
  another PublicIP holds now is never overwritten (flannel #1289, #805).
* Only expiring leases are deleted when our lease no longer fits the config;
  an operator's reservation is left alone.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Iterable, Literal

from .config import NetworkConfig
from .errors import ConfigError, EtcdError, LeaseError, ReconcilerError
from .leases import Lease, RawKV, encode_lease_value, parse_lease, parse_subnet_key, subnet_key

if TYPE_CHECKING:  # the store is only called, never constructed, here
    from .etcd import EtcdStore

__all__ = [
    "AcquireError",
    "Acquired",
    "Choice",
    "LeaseKeeper",
    "OutOfSubnets",
    "SUBNET_TTL",
    "acquire_lease",
    "choose_subnet",
]

log = logging.getLogger(__name__)

#: flanneld's ``subnetTTL``: 24 h.
SUBNET_TTL = 86400
#: flanneld picks at random among this many free subnets, lowest first.
_CANDIDATES = 100


class AcquireError(ReconcilerError):
    """No lease could be acquired."""


class OutOfSubnets(AcquireError):
    """Every subnet in [SubnetMin, SubnetMax] is taken."""


@dataclass(frozen=True, slots=True)
class Choice:
    """What ``choose_subnet`` decided.

    ``source``: "own" (``lease`` is ours by PublicIP: reuse it), "previous"
    (the subnet from subnet.env) or "random".  ``delete``: our leases that no
    longer fit the config, to delete first.
    """

    subnet: IPv4Network
    source: Literal["own", "previous", "random"]
    lease: Lease | None = None
    delete: tuple[Lease, ...] = ()

    @property
    def reservation(self) -> bool:
        return self.lease is not None and self.lease.is_reservation


@dataclass(frozen=True, slots=True)
class Acquired:
    """The lease this node holds.

    ``key`` is the full etcd key (``<prefix>/subnets/10.244.1.0-24``);
    ``lease_id`` 0 and ``reservation`` True for a reservation; ``ttl`` is the
    TTL etcd granted or last reset the lease to (0 for a reservation).
    """

    subnet: IPv4Network
    key: str
    lease_id: int
    value: str
    reservation: bool
    ttl: int = 0


# --------------------------------------------------------------------------------------------
# Pure: the choice
# --------------------------------------------------------------------------------------------

def choose_subnet(config: NetworkConfig, leases: Iterable[Lease], public_ip: str,
                  previous_subnet: IPv4Network | None, rng: random.Random, *,
                  occupied: Iterable[IPv4Network] = ()) -> Choice:
    """flanneld's choice of subnet for the node with ``public_ip``.

    ``leases``: every individually valid lease (reservations included), in
    etcd key order.  ``occupied``: further subnets that are taken although
    their value does not parse (their key exists: a create there would fail).

    1. Our lease by PublicIP, if it fits the config (inside [SubnetMin,
       SubnetMax], prefix == SubnetLen); a compatible reservation wins over an
       expiring lease.  Our expiring leases that do not fit are to be deleted.
    2. The previous subnet, if it fits and overlaps no lease.
    3. Uniformly at random among the first 100 free aligned subnets from
       SubnetMin to SubnetMax; none: ``OutOfSubnets``.

    Linear in the number of leases: overlap is a set lookup per candidate.
    """
    if not config.enable_ipv4 or config.network is None or config.subnet_len is None \
            or config.subnet_min is None or config.subnet_max is None:
        raise ConfigError("EnableIPv4", "an IPv4 Network is required to acquire a subnet")
    if config.enable_ipv6:
        raise ConfigError("EnableIPv6", "dual-stack lease acquisition is not supported by this agent")
    me = IPv4Address(public_ip)
    plen = config.subnet_len
    lo, hi = int(config.subnet_min), int(config.subnet_max)

    def compatible(net: IPv4Network) -> bool:
        return net.prefixlen == plen and lo <= int(net.network_address) <= hi

    leases = list(leases)
    own = [lease for lease in leases if _same_ip(lease.public_ip, me)]
    compatible_own = [lease for lease in own if compatible(lease.subnet)]
    delete = tuple(lease for lease in own if not compatible(lease.subnet) and not lease.is_reservation)
    for lease in own:
        if not compatible(lease.subnet):
            log.info("lease %s for our PublicIP %s does not fit the config (%s, %s..%s)%s", lease.key, me,
                     f"/{plen}", config.subnet_min, config.subnet_max,
                     "; deleting it" if not lease.is_reservation else "; a reservation: left alone")
    if compatible_own:
        # A reservation is the operator's word; otherwise the first in key order, as flanneld.
        chosen = next((lease for lease in compatible_own if lease.is_reservation), compatible_own[0])
        return Choice(chosen.subnet, "own", chosen, delete)

    deleted = {id(lease) for lease in delete}
    taken = _Taken(plen, [lease.subnet for lease in leases if id(lease) not in deleted] + list(occupied))

    if previous_subnet is not None:
        prev = IPv4Network(previous_subnet, strict=False)
        if compatible(prev) and taken.is_free(int(prev.network_address)):
            return Choice(prev, "previous", None, delete)
        log.info("previous subnet %s is taken or does not fit the config: choosing another", prev)

    step = 1 << (32 - plen)
    free: list[int] = []
    candidate = lo
    while candidate <= hi and len(free) < _CANDIDATES:
        if taken.is_free(candidate):
            free.append(candidate)
        candidate += step
    if not free:
        raise OutOfSubnets(f"out of subnets: every /{plen} in {config.subnet_min}..{config.subnet_max} is leased")
    pick = free[rng.randrange(len(free))]
    return Choice(IPv4Network((pick, plen)), "random", None, delete)


class _Taken:
    """Overlap test against a set of subnets in O(distinct shorter prefixes)
    per candidate of length ``plen``: a subnet at least as long overlaps the
    candidate iff it masks to it; a shorter one iff the candidate masks to it."""

    def __init__(self, plen: int, subnets: Iterable[IPv4Network]) -> None:
        self.plen = plen
        self.at_len: set[int] = set()
        self.shorter: dict[int, set[int]] = {}
        mask = _mask(plen)
        for net in subnets:
            addr = int(net.network_address)
            if net.prefixlen >= plen:
                self.at_len.add(addr & mask)
            else:
                self.shorter.setdefault(net.prefixlen, set()).add(addr)

    def is_free(self, addr: int) -> bool:
        if addr in self.at_len:
            return False
        return not any(addr & _mask(p) in nets for p, nets in self.shorter.items())


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF


def _same_ip(text: str, me: IPv4Address) -> bool:
    try:
        return IPv4Address(text) == me
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Imperative: acquire
# --------------------------------------------------------------------------------------------

def acquire_lease(store: "EtcdStore", config: NetworkConfig, public_ip: str, vtep_mac: str,
                  previous_subnet: IPv4Network | None, rng: random.Random, ttl: int = SUBNET_TTL,
                  max_tries: int = 10) -> Acquired:
    """Acquire (or reclaim) this node's lease: list, choose, write with a
    compare; on a lost race list again, up to ``max_tries`` times.

    The value is exactly ``encode_lease_value(public_ip, vtep_mac, config.vni)``.
    Raises ``OutOfSubnets``, ``AcquireError`` (every try lost a race),
    ``ConfigError`` or ``EtcdError``.
    """
    value = encode_lease_value(public_ip, vtep_mac, config.vni)
    base = store.subnets_prefix
    previous = previous_subnet
    for attempt in range(1, max_tries + 1):
        snap = store.snapshot()
        kvs = {kv.key: kv for kv in snap.kvs if kv.key.startswith(base)}
        leases, occupied = _parse_subnets(kvs.values(), base)
        choice = choose_subnet(config, leases, public_ip, previous, rng, occupied=occupied)

        for stale in choice.delete:
            kv = kvs[base + stale.key]
            if store.delete_if_value(kv.key, kv.value):
                log.info("deleted our lease %s: it does not fit the network config", kv.key)

        if choice.lease is not None:
            got = _reclaim(store, kvs[base + choice.lease.key], choice.lease, value, ttl)
            if got is not None:
                log.info("reusing %s %s for PublicIP %s", "reservation" if got.reservation else "lease",
                         got.key, public_ip)
                return got
            # It changed under us; if it vanished, the subnet we just held is the one to take again.
            previous = choice.subnet
        else:
            key = base + subnet_key(choice.subnet)
            lease_id = store.grant(ttl)
            try:
                created = store.create_if_absent(key, value, lease_id)
            except EtcdError:
                _revoke_quietly(store, lease_id)
                raise
            if created:
                log.info("acquired %s subnet %s (%s)", choice.source, choice.subnet, key)
                return Acquired(choice.subnet, key, lease_id, value, False, ttl)
            _revoke_quietly(store, lease_id)
        log.info("lost the race for %s (try %d of %d): listing again", choice.subnet, attempt, max_tries)
    raise AcquireError(f"could not acquire a subnet lease: lost the race {max_tries} times in a row")


def _parse_subnets(kvs: Iterable[RawKV], base: str) -> tuple[list[Lease], list[IPv4Network]]:
    """Leases that parse (whatever the config), in key order, and the subnets of
    keys whose value does not parse: those are taken all the same."""
    leases: list[Lease] = []
    occupied: list[IPv4Network] = []
    for kv in sorted(kvs, key=lambda kv: kv.key):
        name = kv.key[len(base):]
        try:
            leases.append(parse_lease(name, kv.value, kv.lease))
        except LeaseError:
            try:
                occupied.append(parse_subnet_key(name)[0])
            except LeaseError:
                pass  # not a subnet key: flanneld ignores it too
    return leases, occupied


def _reclaim(store: "EtcdStore", kv: RawKV, lease: Lease, value: str, ttl: int) -> Acquired | None:
    """Take back our own key (matched by PublicIP).  None if it changed since we read it."""
    if lease.is_reservation:
        # Lease 0 stays lease 0; rewrite only if the value is stale (e.g. a new VtepMAC).
        if kv.value != value and not store.put_if_value(kv.key, kv.value, value, 0):
            return None
        return Acquired(lease.subnet, kv.key, 0, value, True, 0)

    if kv.value == value:
        # Same bytes: keep the lease, reset its TTL.  Peers see nothing at all.
        try:
            remaining = store.refresh(kv.lease)
        except EtcdError as exc:
            if not _lease_gone(exc):
                raise
            remaining = 0
        if remaining >= ttl:
            return Acquired(lease.subnet, kv.key, kv.lease, value, False, remaining)

    # A new value (or a lease shorter than ours): one PUT with our own fresh lease,
    # over exactly the bytes we read.  The old lease is left to expire, as flanneld does.
    lease_id = store.grant(ttl)
    try:
        written = store.put_if_value(kv.key, kv.value, value, lease_id)
    except EtcdError:
        _revoke_quietly(store, lease_id)
        raise
    if not written:
        _revoke_quietly(store, lease_id)
        return None
    return Acquired(lease.subnet, kv.key, lease_id, value, False, ttl)


def _lease_gone(exc: EtcdError) -> bool:
    from .etcd import EtcdLeaseNotFound  # the seam's own subclass; imported late to keep this module grpc-free

    return isinstance(exc, EtcdLeaseNotFound)


def _revoke_quietly(store: "EtcdStore", lease_id: int) -> None:
    # Best effort: an unrevoked lease holds no key and expires on its own.
    try:
        store.revoke(lease_id)
    except EtcdError as exc:
        log.debug("revoke %d: %s", lease_id, exc)


# --------------------------------------------------------------------------------------------
# Imperative: keep
# --------------------------------------------------------------------------------------------

class LeaseKeeper:
    """Keeps this node's lease alive; the daemon drives it from its loop.

    ``tick(now)`` does nothing until the next check is due, then ``ensure()``s:
    every ``min(refresh_every, ttl / 3)`` seconds normally (hourly for the 24 h
    TTL), every ``retry_every`` seconds after a failure (flanneld retries every
    minute), so an etcd outage of nearly the whole TTL is survived.  ``now`` is
    any monotonic clock, in seconds (a fake one in tests).

    Call ``ensure()`` directly when the watch shows our key deleted or changed.
    """

    def __init__(self, store: "EtcdStore", config: NetworkConfig, public_ip: str, vtep_mac: str,
                 acquired: Acquired, rng: random.Random, *, now: float, ttl: int = SUBNET_TTL,
                 refresh_every: float = 3600.0, retry_every: float = 60.0) -> None:
        self.store = store
        self.config = config
        self.public_ip = public_ip
        self.vtep_mac = vtep_mac
        self.rng = rng
        self.ttl = ttl
        self.refresh_every = refresh_every
        self.retry_every = retry_every
        self.current = acquired
        self.last_error: ReconcilerError | None = None
        self.next_due = now + self._interval()

    def _interval(self) -> float:
        if self.current.reservation:
            return self.refresh_every  # nothing expires; just check we still hold it
        return max(1.0, min(self.refresh_every, (self.current.ttl or self.ttl) / 3))

    def tick(self, now: float) -> Acquired:
        """The current lease, after a check if one is due.  A failed check is
        retried ``retry_every`` s later and re-raised (the caller logs it)."""
        if now < self.next_due:
            return self.current
        try:
            self.ensure()
        except ReconcilerError as exc:
            self.last_error = exc
            self.next_due = now + min(self.retry_every, self._interval())
            raise
        self.last_error = None
        self.next_due = now + self._interval()
        return self.current

    def update_vtep_mac(self, vtep_mac: str) -> None:
        """The device was re-created with a new MAC: the next tick rewrites the lease."""
        encode_lease_value(self.public_ip, vtep_mac, self.config.vni)  # a bad MAC fails here, not in every tick
        self.vtep_mac = vtep_mac
        self.next_due = float("-inf")

    def ensure(self) -> Acquired:
        """Check we still hold our key and extend it; re-acquire otherwise.

        Key gone (expired, deleted): re-acquired, on the same subnet if free.
        Key now holds another PublicIP: left alone, and a new subnet acquired.
        """
        cur = self.current
        want = encode_lease_value(self.public_ip, self.vtep_mac, self.config.vni)
        kv = self.store.get(cur.key)
        if kv is not None and kv.value == want == cur.value:
            if cur.reservation and kv.lease == 0:
                return cur
            if not cur.reservation and kv.lease:
                try:
                    remaining = self.store.refresh(kv.lease)
                except EtcdError as exc:
                    if not _lease_gone(exc):
                        raise
                else:
                    self.current = replace(cur, lease_id=kv.lease, ttl=remaining)
                    return self.current
        if kv is None:
            log.warning("our lease %s is gone: re-acquiring", cur.key)
        elif kv.value != cur.value:
            log.warning("our lease %s changed (now %s): re-acquiring", cur.key, kv.value)
        self.current = acquire_lease(self.store, self.config, self.public_ip, self.vtep_mac,
                                     cur.subnet, self.rng, self.ttl)
        if self.current.subnet != cur.subnet:
            log.warning("subnet changed from %s to %s", cur.subnet, self.current.subnet)
        return self.current
