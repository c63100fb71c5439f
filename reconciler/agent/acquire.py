"""This node's subnet lease, acquired and kept the flanneld way, minus its crashes.

* ``choose_subnet`` is pure: flanneld's order (``pkg/subnet/etcd``'s
  ``tryAcquireLease``) -- our lease by PublicIP, else the previous subnet
  from subnet.env, else a random pick among the first 100 free subnets; in
  dual stack the IPv6 subnet the same way, with its own random pick
  (docs/dual-stack.md).
* ``acquire_lease`` applies a choice to etcd with compare-and-set writes and
  re-lists after a lost race (flanneld exits with status 1 there).
* ``LeaseKeeper`` keeps the lease alive with keepalives on a timer driven by
  the caller's clock; re-acquires -- the same subnet when it is still free
  -- when the key vanished or another node created it anew (flanneld exits
  there); and writes ours back over a bad write in place (docs/decisions.md,
  "Our own key").

Where we differ from flanneld, on purpose:

* A key with etcd lease 0 and our PublicIP is a reservation and stays one:
  we rewrite its value (new VtepMAC) with lease 0, never attach a TTL.
* Renewal is a keepalive, not Grant + unconditional Put: peers see the same
  bytes and no watch event, instead of one PUT per node per day cluster-wide.
* Every write over an existing key compares the value we read first, so a
  lease another node acquired is never overwritten (flannel #1289, #805); only
  our own live key, overwritten in place, is written back.
* Only expiring leases are deleted when our lease no longer fits the config;
  an operator's reservation is left alone.
* Dual stack: a previous subnet is reused per family (flanneld drops both when
  either half does not fit), and a previous IPv6 subnet another lease holds
  is never taken (flanneld would create a second key on the same IPv6 subnet).
* IPv6-only (``EnableIPv4: false``) is refused up front: see
  ``config.require_ipv4`` and docs/dual-stack.md.
"""
from __future__ import annotations

import collections
import logging
import random
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Mapping

from reconciler.core.logtext import esc
from reconciler.core.config import NetworkConfig, require_ipv4
from reconciler.core.errors import ConfigError, EtcdError, LeaseError, ReconcilerError
from reconciler.core.leases import Lease, RawKV, encode_lease_value, parse_lease, parse_subnet_key, subnet_key

if TYPE_CHECKING:  # the store is only called, never constructed, here
    from reconciler.etcd.store import EtcdStore

__all__ = [
    "AcquireError",
    "Acquired",
    "Choice",
    "LeaseKeeper",
    "SubnetTable",
    "OutOfSubnets",
    "SUBNET_TTL",
    "acquire_lease",
    "choose_subnet",
    "lease_value",
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
    #: The IPv6 subnet in dual stack (None otherwise); ``ipv6_source`` as ``source``.
    ipv6_subnet: IPv6Network | None = None
    ipv6_source: Literal["own", "previous", "random", ""] = ""

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
    ipv6_subnet: IPv6Network | None = None
    #: etcd's create revision of the key as we hold it (0: not known).  Tells our key overwritten
    #: in place from our key deleted and created again by someone else (``LeaseKeeper.ensure``).
    create_revision: int = field(default=0, compare=False)
    #: The keys acquisition deleted on the way (our leases that no longer fit the config): the
    #: agent waits for the watch to show their deletion before its first cycle.
    deleted: tuple[str, ...] = field(default=(), compare=False)


# --------------------------------------------------------------------------------------------
# Pure: the choice
# --------------------------------------------------------------------------------------------

def choose_subnet(config: NetworkConfig, leases: Iterable[Lease], public_ip: str,
                  previous_subnet: IPv4Network | None, rng: random.Random, *,
                  occupied: Iterable[IPv4Network | tuple[IPv4Network, IPv6Network | None]] = (),
                  previous_ipv6_subnet: IPv6Network | None = None) -> Choice:
    """flanneld's choice of subnet for the node with ``public_ip``.

    ``leases``: every individually valid lease (reservations included), in
    etcd key order.  ``occupied``: further subnets (or (IPv4, IPv6) pairs)
    that are taken although their value does not parse (their key exists:
    a create there would fail).

    1. Our lease by PublicIP, if it fits the config (inside [SubnetMin,
       SubnetMax], prefix == SubnetLen, and in dual stack an IPv6 subnet
       inside [IPv6SubnetMin, IPv6SubnetMax] of IPv6SubnetLen; without dual
       stack, no IPv6 subnet); a compatible reservation wins over an
       expiring lease.  Our expiring leases that do not fit are to be deleted.
    2. The previous subnet, if it fits and overlaps no lease; in dual stack
       the previous IPv6 subnet likewise, each family on its own.
    3. Uniformly at random among the first 100 free aligned subnets from
       SubnetMin to SubnetMax (IPv6: a separate pick from IPv6SubnetMin to
       IPv6SubnetMax); none: ``OutOfSubnets``.

    Linear in the number of leases: overlap is a set lookup per candidate.
    """
    require_ipv4(config)
    if config.network is None or config.subnet_len is None \
            or config.subnet_min is None or config.subnet_max is None:
        raise ConfigError("EnableIPv4", "an IPv4 Network is required to acquire a subnet")
    dual = config.enable_ipv6
    me = IPv4Address(public_ip)
    plen = config.subnet_len
    lo, hi = int(config.subnet_min), int(config.subnet_max)

    def compatible4(net: IPv4Network) -> bool:
        return net.prefixlen == plen and lo <= int(net.network_address) <= hi

    def compatible6(net6: IPv6Network | None) -> bool:
        # flanneld's isIPv6SubnetConfigCompat: without dual stack, only "no IPv6 subnet" fits.
        if not dual:
            return net6 is None
        return (net6 is not None and net6.prefixlen == config.ipv6_subnet_len
                and int(config.ipv6_subnet_min) <= int(net6.network_address) <= int(config.ipv6_subnet_max))

    def compatible(lease: Lease) -> bool:
        return compatible4(lease.subnet) and compatible6(lease.ipv6_subnet)

    leases = list(leases)
    # Compared as text: IPv4Address accepts only the canonical dotted quad (no leading zeros, no
    # spaces), so two texts name the same address exactly when they are equal, and a text it
    # would reject is never ours; an IPv4Address per lease was most of a 5,000-lease choice.
    me_text = str(me)
    own = [lease for lease in leases if lease.public_ip == me_text]
    compatible_own = [lease for lease in own if compatible(lease)]
    delete = tuple(lease for lease in own if not compatible(lease) and not lease.is_reservation)
    for lease in own:
        if not compatible(lease):
            log.info("lease %s for our PublicIP %s does not fit the config (%s, %s..%s%s)%s", esc(lease.key), me,
                     f"/{plen}", config.subnet_min, config.subnet_max,
                     f"; IPv6 /{config.ipv6_subnet_len}, {config.ipv6_subnet_min}..{config.ipv6_subnet_max}"
                     if dual else "; no IPv6",
                     "; deleting it" if not lease.is_reservation else "; a reservation: left alone")
    if compatible_own:
        # A reservation is the operator's word; otherwise the first in key order, as flanneld.
        chosen = next((lease for lease in compatible_own if lease.is_reservation), compatible_own[0])
        return Choice(chosen.subnet, "own", chosen, delete, chosen.ipv6_subnet, "own" if dual else "")

    deleted = {id(lease) for lease in delete}
    kept = [lease for lease in leases if id(lease) not in deleted]
    occupied4: list[IPv4Network] = []
    occupied6: list[IPv6Network] = []
    for item in occupied:
        net4, net6 = item if isinstance(item, tuple) else (item, None)
        occupied4.append(net4)
        if net6 is not None:
            occupied6.append(net6)
    taken = _Taken(plen, [lease.subnet for lease in kept] + occupied4)

    subnet: IPv4Network | None = None
    source = "random"
    if previous_subnet is not None:
        prev = IPv4Network(previous_subnet, strict=False)
        if compatible4(prev) and taken.is_free(int(prev.network_address)):
            subnet, source = prev, "previous"
        else:
            log.info("previous subnet %s is taken or does not fit the config: choosing another", prev)
    if subnet is None:
        pick = _pick(taken, lo, hi, 1 << (32 - plen), rng)
        if pick is None:
            raise OutOfSubnets(f"out of subnets: every /{plen} in {config.subnet_min}..{config.subnet_max} "
                               f"is leased")
        subnet = IPv4Network((pick, plen))
    if not dual:
        return Choice(subnet, source, None, delete)

    plen6 = config.ipv6_subnet_len
    taken6 = _Taken(plen6, [lease.ipv6_subnet for lease in kept if lease.ipv6_subnet is not None] + occupied6,
                    bits=128)
    if previous_ipv6_subnet is not None:
        prev6 = IPv6Network(previous_ipv6_subnet, strict=False)
        if compatible6(prev6) and taken6.is_free(int(prev6.network_address)):
            return Choice(subnet, source, None, delete, prev6, "previous")
        log.info("previous IPv6 subnet %s is taken or does not fit the config: choosing another", prev6)
    pick6 = _pick(taken6, int(config.ipv6_subnet_min), int(config.ipv6_subnet_max), 1 << (128 - plen6), rng)
    if pick6 is None:
        raise OutOfSubnets(f"out of IPv6 subnets: every /{plen6} in {config.ipv6_subnet_min}.."
                           f"{config.ipv6_subnet_max} is leased")
    return Choice(subnet, source, None, delete, IPv6Network((pick6, plen6)), "random")


def _pick(taken: "_Taken", lo: int, hi: int, step: int, rng: random.Random) -> int | None:
    """flanneld's allocation: the first 100 free subnets from ``lo`` up to ``hi``, one at random."""
    free: list[int] = []
    candidate = lo
    while candidate <= hi and len(free) < _CANDIDATES:
        if taken.is_free(candidate):
            free.append(candidate)
        candidate += step
    if not free:
        return None
    return free[rng.randrange(len(free))]


class _Taken:
    """Overlap test against a set of subnets in O(distinct shorter prefixes)
    per candidate of length ``plen``: a subnet at least as long overlaps the
    candidate iff it masks to it; a shorter one iff the candidate masks to it.
    ``bits`` is the address size: 32, or 128 for IPv6."""

    def __init__(self, plen: int, subnets: Iterable[IPv4Network | IPv6Network], bits: int = 32) -> None:
        self.plen = plen
        self.bits = bits
        self.at_len: set[int] = set()
        self.shorter: dict[int, set[int]] = {}
        mask = _mask(plen, bits)
        for net in subnets:
            addr = int(net.network_address)
            if net.prefixlen >= plen:
                self.at_len.add(addr & mask)
            else:
                self.shorter.setdefault(net.prefixlen, set()).add(addr)

    def is_free(self, addr: int) -> bool:
        if addr in self.at_len:
            return False
        return not any(addr & _mask(p, self.bits) in nets for p, nets in self.shorter.items())


def _mask(plen: int, bits: int = 32) -> int:
    full = (1 << bits) - 1
    return (full << (bits - plen)) & full


def _same_ip(text: str, me: IPv4Address) -> bool:
    try:
        return IPv4Address(text) == me
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Imperative: acquire
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubnetTable:
    """The subnets as acquisition sees them, from one listing of ``<prefix>/subnets/``: the kvs by full key, the
    leases that parse (whatever the config) in key order, and the subnets of keys whose value
    does not parse (taken all the same).

    The agent lists the leases once at start-up and hands that listing, already parsed by its
    lease index, to its first try (``acquire_lease``'s ``listing``): one listing and one parse
    feed the VTEP MAC choice, acquisition and the first cycle (docs/incremental.md)."""

    kvs: Mapping[str, RawKV]
    leases: tuple[Lease, ...]
    occupied: tuple[tuple[IPv4Network, IPv6Network | None], ...]

    @classmethod
    def of(cls, kvs: Iterable[RawKV], base: str,
           parsed: Callable[[str], Lease | None] | None = None) -> "SubnetTable":
        """The listing of ``kvs`` (only those under ``base``).  ``parsed``: the lease already
        parsed from a full key's value, or None when that value does not parse; without it
        every value is parsed here."""
        by_key = {kv.key: kv for kv in kvs if kv.key.startswith(base)}
        leases, occupied = _parse_subnets(by_key.values(), base, parsed)
        return cls(by_key, tuple(leases), tuple(occupied))


def acquire_lease(store: "EtcdStore", config: NetworkConfig, public_ip: str, vtep_mac: str,
                  previous_subnet: IPv4Network | None, rng: random.Random, ttl: int = SUBNET_TTL,
                  max_tries: int = 10, *, public_ipv6: str | None = None, v6_vtep_mac: str | None = None,
                  previous_ipv6_subnet: IPv6Network | None = None, listing: SubnetTable | None = None) -> Acquired:
    """Acquire (or reclaim) this node's lease: list, choose, write with a
    compare; on a lost race list again, up to ``max_tries`` times.  ``listing``: what the
    first try chooses from instead of listing itself (a listing the caller just read).

    The value is exactly ``lease_value(config, ...)``: in dual stack with
    ``PublicIPv6`` and ``BackendV6Data``, under the key naming both subnets.
    Raises ``OutOfSubnets``, ``AcquireError`` (every try lost a race),
    ``ConfigError`` or ``EtcdError``.
    """
    value = lease_value(config, public_ip, vtep_mac, public_ipv6, v6_vtep_mac)
    base = store.subnets_prefix
    previous, previous6 = previous_subnet, previous_ipv6_subnet
    deleted: list[str] = []
    for attempt in range(1, max_tries + 1):
        if listing is None:
            listing = SubnetTable.of(store.snapshot().kvs, base)
        kvs = listing.kvs
        leases, occupied = list(listing.leases), list(listing.occupied)
        listing = None      # a lost race lists again
        # Our previous subnet's key holding a value nobody can parse names no other owner: it is
        # ours to take back (docs/decisions.md, "Our own key"), not a reason to move the node.
        # (IPv4 only: in dual stack the IPv6 half may be chosen anew, under another key.)
        junk = {}
        if previous is not None and not config.enable_ipv6:
            prev = IPv4Network(previous, strict=False)
            junk = {pair: kvs[base + subnet_key(*pair)] for pair in occupied
                    if pair == (prev, None) and base + subnet_key(*pair) in kvs}
            occupied = [pair for pair in occupied if pair not in junk]
        choice = choose_subnet(config, leases, public_ip, previous, rng, occupied=occupied,
                               previous_ipv6_subnet=previous6)

        for stale in choice.delete:
            kv = kvs[base + stale.key]
            if store.delete_if_value(kv.key, kv.value):
                deleted.append(kv.key)
                log.info("deleted our lease %s: it does not fit the network config", esc(kv.key))

        if choice.lease is not None:
            got = _reclaim(store, kvs[base + choice.lease.key], choice.lease, value, ttl)
            if got is not None:
                log.info("reusing %s %s for PublicIP %s", "reservation" if got.reservation else "lease",
                         esc(got.key), public_ip)
                return replace(got, deleted=tuple(deleted))
            # It changed under us; if it vanished, the subnet we just held is the one to take again.
            previous, previous6 = choice.subnet, choice.ipv6_subnet
        else:
            key = base + subnet_key(choice.subnet, choice.ipv6_subnet)
            lease_id = store.grant(ttl)
            taken_back = next((kv for kv in junk.values() if kv.key == key), None)
            try:
                if taken_back is not None:
                    created = store.put_if_value(key, taken_back.value, value, lease_id)
                    if created:
                        log.error("our previous subnet's key %s held a value nobody can parse (%s): took it "
                                  "back", esc(key), esc(taken_back.value))
                else:
                    created = store.create_if_absent(key, value, lease_id)
            except EtcdError:
                _revoke_quietly(store, lease_id)
                raise
            if created:
                created_at = _create_revision(store, key)
                if choice.ipv6_subnet is not None:
                    log.info("acquired %s subnet %s and %s IPv6 subnet %s (%s)", choice.source, choice.subnet,
                             choice.ipv6_source, choice.ipv6_subnet, key)
                else:
                    log.info("acquired %s subnet %s (%s)", choice.source, choice.subnet, key)
                return Acquired(choice.subnet, key, lease_id, value, False, ttl, choice.ipv6_subnet, created_at,
                                tuple(deleted))
            _revoke_quietly(store, lease_id)
        log.info("lost the race for %s (try %d of %d): listing again", choice.subnet, attempt, max_tries)
    raise AcquireError(f"could not acquire a subnet lease: lost the race {max_tries} times in a row")


def lease_value(config: NetworkConfig, public_ip: str, vtep_mac: str, public_ipv6: str | None = None,
                v6_vtep_mac: str | None = None) -> str:
    """The value of our lease for this config, as flanneld's ``newSubnetAttrs`` builds it:
    the IPv6 half (``PublicIPv6``, ``BackendV6Data`` with the same VNI) only in
    dual stack, where it is required.  Raises ``ConfigError``."""
    if not config.enable_ipv6:
        return encode_lease_value(public_ip, vtep_mac, config.vni)
    if public_ipv6 is None or v6_vtep_mac is None:
        raise ConfigError("EnableIPv6", "dual stack needs this node's IPv6 address (--public-ipv6, or an "
                                        "IPv6 address on the underlay interface) and a v6 VTEP MAC")
    return encode_lease_value(public_ip, vtep_mac, config.vni, public_ipv6, v6_vtep_mac)


def _parse_subnets(kvs: Iterable[RawKV], base: str, parsed: Callable[[str], Lease | None] | None = None
                   ) -> tuple[list[Lease], list[tuple[IPv4Network, IPv6Network | None]]]:
    """Leases that parse (whatever the config), in key order, and the subnets of
    keys whose value does not parse: those are taken all the same.  ``parsed``: the
    lease already parsed from a full key's value (None: it does not parse), instead of
    parsing each value here."""
    leases: list[Lease] = []
    occupied: list[tuple[IPv4Network, IPv6Network | None]] = []
    for kv in sorted(kvs, key=lambda kv: kv.key):
        name = kv.key[len(base):]
        if parsed is not None:
            lease = parsed(kv.key)
        else:
            try:
                lease = parse_lease(name, kv.value, kv.lease)
            except LeaseError:
                lease = None
        if lease is not None:
            leases.append(lease)
            continue
        try:
            occupied.append(parse_subnet_key(name))
        except LeaseError:
            pass  # not a subnet key: flanneld ignores it too
    return leases, occupied


def _reclaim(store: "EtcdStore", kv: RawKV, lease: Lease, value: str, ttl: int) -> Acquired | None:
    """Take back our own key (matched by PublicIP).  None if it changed since we read it."""
    if lease.is_reservation:
        # Lease 0 stays lease 0; rewrite only if the value is stale (e.g. a new VtepMAC).
        if kv.value != value and not store.put_if_value(kv.key, kv.value, value, 0):
            return None
        return Acquired(lease.subnet, kv.key, 0, value, True, 0, lease.ipv6_subnet, kv.create_revision)

    if kv.value == value:
        # Same bytes: keep the lease, reset its TTL.  Peers see nothing at all.
        try:
            remaining = store.refresh(kv.lease)
        except EtcdError as exc:
            if not _lease_gone(exc):
                raise
            remaining = 0
        if remaining >= ttl:
            return Acquired(lease.subnet, kv.key, kv.lease, value, False, remaining, lease.ipv6_subnet,
                            kv.create_revision)

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
    return Acquired(lease.subnet, kv.key, lease_id, value, False, ttl, lease.ipv6_subnet, kv.create_revision)


def _create_revision(store: "EtcdStore", key: str) -> int:
    """The create revision of the key we just created (the transaction's answer does not carry
    it); 0 when the read fails: the keeper then treats any overwrite as one in place."""
    try:
        kv = store.get(key)
    except EtcdError:
        return 0
    return kv.create_revision if kv is not None else 0


def _lease_gone(exc: EtcdError) -> bool:
    from reconciler.etcd.store import EtcdLeaseNotFound  # the seam's own subclass; imported late to keep this module grpc-free

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
    every ``min(refresh_every, ttl / 3, ttl - renew_margin)`` seconds normally
    (hourly for the 24 h TTL), every ``retry_every`` seconds after a failure
    (flanneld retries every minute), so an etcd outage of nearly the whole TTL
    is survived.  ``renew_margin`` is flanneld's ``-subnet-lease-renew-margin``
    in seconds: a keepalive resets the TTL, so renewing every ``ttl - margin``
    at the latest keeps at least ``margin`` left at every renewal, which is
    what the flag asks of flanneld's Grant + Put (docs/flags.md).  ``now`` is
    any monotonic clock, in seconds (a fake one in tests).

    Call ``ensure()`` directly when the watch shows our key deleted or changed.
    """

    def __init__(self, store: "EtcdStore", config: NetworkConfig, public_ip: str, vtep_mac: str,
                 acquired: Acquired, rng: random.Random, *, now: float, ttl: int = SUBNET_TTL,
                 refresh_every: float = 3600.0, retry_every: float = 60.0, renew_margin: float = 3600.0,
                 public_ipv6: str | None = None, v6_vtep_mac: str | None = None) -> None:
        self.store = store
        self.config = config
        self.public_ip = public_ip
        self.vtep_mac = vtep_mac
        self.public_ipv6 = public_ipv6
        self.v6_vtep_mac = v6_vtep_mac
        self.rng = rng
        self.ttl = ttl
        self.refresh_every = refresh_every
        self.retry_every = retry_every
        self.renew_margin = renew_margin
        self.current = acquired
        #: The PublicIP changed (``update_public_ip``): rewrite our lease in place at the next check.
        self._moved = False
        self.last_error: ReconcilerError | None = None
        self.next_due = now + self._interval()
        #: Writes over our key by others, by kind ("unparseable", "foreign": written back;
        #: "taken": re-created by another node, which keeps it): counted for the metrics.
        self.overwritten: collections.Counter = collections.Counter()
        #: Why our key does not hold our lease right now (None: it does, as of the last check).
        self.not_ours: str | None = None

    def _interval(self) -> float:
        if self.current.reservation:
            return self.refresh_every  # nothing expires; just check we still hold it
        ttl = self.current.ttl or self.ttl
        # A margin as long as the TTL (only test leases are that short) leaves ttl / 3.
        by_margin = ttl - self.renew_margin if self.renew_margin < ttl else ttl / 3
        return max(1.0, min(self.refresh_every, ttl / 3, by_margin))

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

    def update_vtep_mac(self, vtep_mac: str, v6_vtep_mac: str | None = None) -> None:
        """The device was re-created with a new MAC: the next tick rewrites the lease.
        ``v6_vtep_mac`` None keeps the v6 device's MAC as it is."""
        v6 = v6_vtep_mac or self.v6_vtep_mac
        # A bad MAC fails here, not in every tick.
        lease_value(self.config, self.public_ip, vtep_mac, self.public_ipv6, v6)
        self.vtep_mac, self.v6_vtep_mac = vtep_mac, v6
        self.next_due = float("-inf")

    def update_public_ip(self, public_ip: str) -> None:
        """The underlay's address moved: the next check rewrites our lease in place (same key, same
        etcd lease) with the new PublicIP.  flanneld's order would look our lease up by the new
        address, find none, and take another subnet while the old lease lives on until it expires."""
        lease_value(self.config, public_ip, self.vtep_mac, self.public_ipv6, self.v6_vtep_mac)  # checks it
        self.public_ip = public_ip
        self._moved = True
        self.next_due = float("-inf")

    def _value(self) -> str:
        return lease_value(self.config, self.public_ip, self.vtep_mac, self.public_ipv6, self.v6_vtep_mac)

    def ensure(self) -> Acquired:
        """Check we still hold our key and extend it; repair or re-acquire otherwise.

        * Key gone (expired, deleted): re-acquired, on the same subnet if free.
        * A value nobody can parse, or another PublicIP written over our key *in place* (its
          create revision is still ours): nobody acquired it -- flanneld acquires only with
          a create-if-absent, which fails on an existing key -- so it is a bad write.  Ours is
          written back (over exactly the bytes read), the subnet and every kernel object are
          kept, and the write is logged and counted (docs/decisions.md, "Our own key").
        * Key deleted and created again by another PublicIP: that node acquired a subnet that
          was free and already uses it; it keeps it, and we re-acquire elsewhere.
        """
        cur = self.current
        want = self._value()
        kv = self.store.get(cur.key)
        if kv is not None and kv.value == want == cur.value:
            if cur.reservation and kv.lease == 0:
                return self._ours(kv)
            if not cur.reservation and kv.lease:
                try:
                    remaining = self.store.refresh(kv.lease)
                except EtcdError as exc:
                    if not _lease_gone(exc):
                        raise
                else:
                    self.current = replace(cur, lease_id=kv.lease, ttl=remaining)
                    return self._ours(kv)
        if self._moved and kv is not None and kv.value == cur.value != want:
            # Still ours, as we last wrote it: only the PublicIP changes (compare-and-swap, so a
            # value someone else wrote meanwhile is never overwritten).
            if self.store.put_if_value(cur.key, cur.value, want, kv.lease):
                log.warning("our lease %s now advertises PublicIP %s", esc(cur.key), self.public_ip)
                self._moved = False
                self.current = replace(cur, value=want, lease_id=kv.lease)
                self.not_ours = None
                return self.current
        kind = self._stranger(kv) if kv is not None else None
        if kind is not None:
            in_place = not cur.create_revision or not kv.create_revision \
                or kv.create_revision == cur.create_revision
            if in_place or kind == "unparseable":   # a value nobody can parse names no other owner
                return self._write_back(cur, kv, want, kind)
            self.overwritten["taken"] += 1
            log.error("our lease %s was deleted and created again by another node (now %s): it keeps the "
                      "subnet; re-acquiring", esc(cur.key), esc(kv.value))
        elif kv is None:
            log.warning("our lease %s is gone: re-acquiring", esc(cur.key))
        elif kv.value != cur.value:
            log.warning("our lease %s changed (now %s): re-acquiring", esc(cur.key), esc(kv.value))
        self.current = acquire_lease(self.store, self.config, self.public_ip, self.vtep_mac,
                                     cur.subnet, self.rng, self.ttl, public_ipv6=self.public_ipv6,
                                     v6_vtep_mac=self.v6_vtep_mac, previous_ipv6_subnet=cur.ipv6_subnet)
        self.not_ours = None
        if self.current.subnet != cur.subnet:
            log.warning("subnet changed from %s to %s", cur.subnet, self.current.subnet)
        if self.current.ipv6_subnet != cur.ipv6_subnet:
            log.warning("IPv6 subnet changed from %s to %s", cur.ipv6_subnet, self.current.ipv6_subnet)
        return self.current

    def _ours(self, kv: RawKV) -> Acquired:
        self.not_ours = None
        if kv.create_revision and kv.create_revision != self.current.create_revision:
            self.current = replace(self.current, create_revision=kv.create_revision)
        return self.current

    def _stranger(self, kv: RawKV) -> str | None:
        """"unparseable" or "foreign" (another PublicIP) when ``kv`` is not a lease of this node;
        None when it is ours by PublicIP (a changed VtepMAC: re-acquisition rewrites it)."""
        name = kv.key[len(self.store.subnets_prefix):]
        try:
            lease = parse_lease(name, kv.value, kv.lease)
        except LeaseError:
            return "unparseable"
        return None if _same_ip(lease.public_ip, IPv4Address(self.public_ip)) else "foreign"

    def _write_back(self, cur: Acquired, kv: RawKV, want: str, kind: str) -> Acquired:
        """Put our value back over exactly the bytes read, under our etcd lease if it still lives
        (the bad write detached the key from it), else a fresh one with our TTL."""
        self.overwritten[kind] += 1
        self.not_ours = f"our lease {esc(cur.key)} holds {'an unparseable value' if kind == 'unparseable' else 'another PublicIP'}"
        lease_id, ttl = 0, 0
        if not cur.reservation:
            try:
                lease_id, ttl = cur.lease_id, self.store.refresh(cur.lease_id)
            except EtcdError as exc:
                if not _lease_gone(exc):
                    raise
                lease_id, ttl = self.store.grant(self.ttl), self.ttl
        if not self.store.put_if_value(kv.key, kv.value, want, lease_id):
            # Written again meanwhile: the watch shows it and the next check decides again.
            log.error("our lease %s was overwritten (%s: %s) and changed again before we could write it "
                      "back; checking again", esc(cur.key), kind, esc(kv.value))
            return cur
        log.error("our lease %s was overwritten with %s (%s); wrote ours back: subnet %s kept, nothing on "
                  "this node changed", esc(cur.key), "a value nobody can parse" if kind == "unparseable"
                  else "another node's PublicIP", esc(kv.value), cur.subnet)
        self.not_ours = None
        self.current = replace(cur, lease_id=lease_id, value=want, ttl=ttl,
                               create_revision=kv.create_revision or cur.create_revision)
        return self.current
