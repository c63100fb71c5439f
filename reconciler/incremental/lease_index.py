"""The lease table, kept parsed and validated one etcd event at a time.

``leases.validate_leases`` decides, for a whole snapshot, which leases are
usable: each parses, fits the config, and wins every claim it makes (its
subnet, VtepMAC, PublicIP, and their IPv6 twins) against the leases written
before it.  Re-running it on every event costs the whole cluster per event
(at 5,000 nodes, parsing alone was about 40 % of a cycle).  ``LeaseIndex``
gives the *same answer* at the cost of the event:

* a value is parsed once, when it arrives; a re-put of the same value and
  etcd lease (a rolling restart re-puts every lease) reuses the parsed one;
* conflicts are decided per *component*: the leases linked to each other by
  shared claims.  The greedy "oldest claimant wins, a loser claims nothing"
  rule only ever compares leases that share a claim, so deciding one
  component alone gives exactly what deciding the whole table would.  A put
  or delete re-decides the component of that lease, before and after the
  change (a lease that frees a MAC may let an older loser win); in a healthy
  cluster every component is a single lease, so an event is O(1).

``tests/test_lease_index.py`` holds it to ``validate_leases`` after random
sequences of puts and deletes, including conflicting ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from reconciler.core.config import NetworkConfig
from reconciler.core.errors import LeaseError
from reconciler.core.underlay_guard import UnderlayGuard
from reconciler.core.leases import Lease, RawKV, Skipped, _misfit, _strip_prefix, lease_claims, parse_lease

__all__ = ["LeaseIndex", "Status"]


@dataclass(frozen=True, slots=True)
class _Entry:
    kv: RawKV
    lease: Lease | None      # parsed and fitting the config; None when ``reason`` says why not
    reason: str | None
    #: The value parsed whatever the config (None: it does not parse): what acquisition reads
    #: (a lease that does not fit still holds its subnet), parsed once with the rest.
    parsed: Lease | None = None


#: A lease's standing: a valid ``Lease``, or a ``Skipped`` with the reason.
Status = Lease | Skipped


class LeaseIndex:
    """Raw kvs under ``<prefix>/subnets/``, their parsed leases, and which are valid.

    Not thread-safe: one owner (the agent's worker) feeds it events in etcd
    order.  ``put``/``delete``/``replace_all`` return the etcd keys whose
    standing changed (valid lease added, removed or different, or skip
    reason changed): exactly what the desired state and the log need.
    """

    def __init__(self, config: NetworkConfig, prefix: str, guard: UnderlayGuard | None = None) -> None:
        self.config = config
        #: This node's underlay facts (``validate_leases``'s ``guard``).
        self.guard = guard
        self.base = _strip_prefix(prefix) + "/subnets/"
        self._entries: dict[str, _Entry] = {}
        #: claim kind -> claimed value -> the etcd key claiming it, or the set of them when more
        #: than one do.  One dict per kind keys on the value the lease already holds (no
        #: ``(kind, value)`` tuple per claim), and a lone claimant, the healthy case, is its key
        #: string rather than a one-element set: 3 claims a lease, about 700 bytes a lease less
        #: (docs/memory.md).
        self._claimants: dict[str, dict[Any, str | set[str]]] = {}
        #: etcd key -> valid lease
        self.valid: dict[str, Lease] = {}
        #: etcd key -> why it is left out
        self.skipped: dict[str, Skipped] = {}
        self._by_public_ip: dict[str, str] = {}
        #: The lease this node holds (the keeper's key): it ranks before every other.
        self.pinned: str | None = None

    # ------------------------------------------------------------ reading
    def leases(self) -> list[Lease]:
        """The valid leases, sorted by key (``validate_leases`` order)."""
        return sorted(self.valid.values(), key=lambda lease: lease.key)

    def skips(self) -> list[Skipped]:
        return sorted(self.skipped.values(), key=lambda s: (s.key, s.reason))

    def status(self, etcd_key: str) -> Status | None:
        return self.valid.get(etcd_key) or self.skipped.get(etcd_key)

    def key_of_public_ip(self, ip: str) -> str | None:
        """The etcd key of the valid lease carrying PublicIP ``ip``."""
        return self._by_public_ip.get(ip)

    def parsed(self, etcd_key: str) -> Lease | None:
        """The lease parsed from ``etcd_key``'s value, valid or not (None: absent or unparsable)."""
        entry = self._entries.get(etcd_key)
        return entry.lease if entry is not None else None

    def parsed_any(self, etcd_key: str) -> Lease | None:
        """The lease parsed from ``etcd_key``'s value whether or not it fits the config (None:
        absent or unparsable): acquisition's view of a listing, without parsing it again."""
        entry = self._entries.get(etcd_key)
        return entry.parsed if entry is not None else None

    def pin(self, etcd_key: str | None) -> set[str]:
        """Make ``etcd_key`` win every claim it makes: the one rule for "which lease is ours".

        The node's own lease is the one its lease keeper holds (acquisition's
        choice: a reservation before an expiring lease).  Without the pin, a
        second lease with our PublicIP that was written earlier would win the
        PublicIP claim, and the node would program a subnet whose lease nobody
        renews: it would move when that lease expired.  Pinned, the other lease
        loses and is reported as a conflict.  Returns the keys whose standing changed.
        """
        if etcd_key == self.pinned:
            return set()
        seeds = {k for k in (self.pinned, etcd_key) if k is not None}
        self.pinned = etcd_key
        return self._resolve(seeds)

    def kvs(self) -> list[RawKV]:
        return [e.kv for e in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------ writing
    def put(self, kv: RawKV) -> set[str]:
        if not kv.key.startswith(self.base):
            return set()
        old = self._entries.get(kv.key)
        if old is not None and old.kv.value == kv.value and old.kv.lease == kv.lease and self._unrivalled(kv.key, old):
            # A re-put of the same bytes by a lease no other lease shares a claim with: only its
            # revision moved, and a rank matters only against rivals, so its standing is what it
            # was.  A rolling restart is thousands of these; deciding each one's component again
            # was most of the worker's time in it.
            self._entries[kv.key] = _Entry(kv, old.lease, old.reason, old.parsed)
            return set()
        seeds = self._store(kv)
        return self._resolve(seeds)

    def _unrivalled(self, key: str, entry: _Entry) -> bool:
        """Whether ``key`` is alone in every claim it makes (a lease that does not parse or fit
        the config claims nothing)."""
        if entry.lease is None:
            return True
        claimants = self._claimants
        # A lone claimant is held as its key string, rivals as a set (``_store``).
        return all(isinstance(claimants.get(what, {}).get(val), str) for what, val in self._claims(entry.lease))

    def delete(self, etcd_key: str) -> set[str]:
        old = self._entries.pop(etcd_key, None)
        if old is None:
            return set()
        seeds = {etcd_key} | self._unclaim(etcd_key, old)
        return self._resolve(seeds)

    def replace_all(self, kvs: Iterable[RawKV]) -> set[str]:
        """A full listing: keys not in it are deleted; unchanged kvs cost a dict lookup."""
        fresh = {kv.key: kv for kv in kvs if kv.key.startswith(self.base)}
        seeds: set[str] = set()
        for key in [k for k in self._entries if k not in fresh]:
            gone = self._entries.pop(key)
            seeds |= {key} | self._unclaim(key, gone)
        for kv in fresh.values():
            old = self._entries.get(kv.key)
            if old is not None and old.kv == kv:
                continue
            seeds |= self._store(kv)
        return self._resolve(seeds)

    def set_guard(self, guard: UnderlayGuard | None) -> set[str]:
        """New underlay facts (the underlay's address or prefixes changed): every lease is judged
        again; returns the keys whose standing changed."""
        if guard == self.guard:
            return set()
        self.guard = guard
        kvs = self.kvs()
        for kv in kvs:
            self._unclaim(kv.key, self._entries.pop(kv.key))
        seeds: set[str] = set()
        for kv in kvs:
            seeds |= self._store(kv)
        return self._resolve(seeds)

    # ----------------------------------------------------------- internals
    def _store(self, kv: RawKV) -> set[str]:
        """Record ``kv``; return the keys whose standing may change (its own, and its old rivals)."""
        old = self._entries.get(kv.key)
        seeds = {kv.key}
        if old is not None and old.kv.value == kv.value and old.kv.lease == kv.lease:
            # Same bytes (a re-put): keep the parsed lease; only the rank moved.
            entry = _Entry(kv, old.lease, old.reason, old.parsed)
            self._entries[kv.key] = entry
            return seeds
        if old is not None:
            seeds |= self._unclaim(kv.key, old)
        parsed, lease, reason = self._parse(kv)
        entry = _Entry(kv, lease, reason, parsed)
        self._entries[kv.key] = entry
        if lease is not None:
            for what, val in self._claims(lease):
                by_val = self._claimants.setdefault(what, {})
                holders = by_val.get(val)
                if holders is None:
                    by_val[val] = kv.key
                elif isinstance(holders, str):
                    if holders != kv.key:
                        by_val[val] = {holders, kv.key}
                else:
                    holders.add(kv.key)
        return seeds

    def _parse(self, kv: RawKV) -> tuple[Lease | None, Lease | None, str | None]:
        """(parsed whatever the config, parsed and fitting, why it does not)."""
        try:
            lease = parse_lease(kv.key[len(self.base):], kv.value, kv.lease)
        except LeaseError as exc:
            return None, None, exc.reason
        reason = _misfit(self.config, lease, self.guard)
        return (lease, None, reason) if reason is not None else (lease, lease, None)

    def _unclaim(self, key: str, entry: _Entry) -> set[str]:
        """Drop ``key``'s claims; return the other claimants of them (their standing may change)."""
        rivals: set[str] = set()
        if entry.lease is None:
            return rivals
        for what, val in self._claims(entry.lease):
            by_val = self._claimants.get(what, {})
            holders = by_val.get(val)
            if holders is None:
                continue
            if isinstance(holders, str):
                if holders == key:
                    del by_val[val]
                else:
                    rivals.add(holders)
                continue
            holders.discard(key)
            rivals |= holders
            if len(holders) == 1:
                by_val[val] = next(iter(holders))
        return rivals

    def _holders(self, what: str, val: Any) -> Iterable[str]:
        """The etcd keys claiming ``val`` as ``what``."""
        holders = self._claimants.get(what, {}).get(val, ())
        return (holders,) if isinstance(holders, str) else holders

    def _claims(self, lease: Lease) -> list[tuple[str, Any]]:
        # The same claims, in the same order, as ``validate_leases``.
        return lease_claims(lease, self.config.enable_ipv6)

    def _component(self, seeds: set[str]) -> set[str]:
        """Every present key linked to ``seeds`` through shared claims."""
        seen: set[str] = set()
        todo = [k for k in seeds if k in self._entries]
        seen.update(todo)
        while todo:
            key = todo.pop()
            lease = self._entries[key].lease
            if lease is None:
                continue
            for what, val in self._claims(lease):
                for other in self._holders(what, val):
                    if other not in seen:
                        seen.add(other)
                        todo.append(other)
        return seen

    def _resolve(self, seeds: set[str]) -> set[str]:
        """Re-decide the components of ``seeds``; return the keys whose standing changed."""
        new: dict[str, Status] = {}
        # A fitting lease that is the only claimant of each of its claims is a component of its
        # own, and wins it: no ranking.  A healthy cluster is all such leases, so a listing of
        # 5,000 (a cold start, a re-list) skips 5,000 component walks and the ranking sort.
        contested: set[str] = set()
        entries = self._entries
        for key in seeds:
            entry = entries.get(key)
            # (Unrivalled: not outranked by the pin either, which only its rivals could lose to.)
            if entry is not None and entry.lease is not None and self._unrivalled(key, entry):
                new[key] = entry.lease
            else:
                contested.add(key)
        component = self._component(contested)
        ranked = []
        for key in component:
            entry = self._entries[key]
            if entry.lease is None:
                new[key] = Skipped(key, entry.reason or "invalid")
            else:
                kv = entry.kv
                ranked.append(((key != self.pinned, kv.mod_revision, entry.lease.key, kv.key, kv.value, kv.lease),
                               key, entry.lease))
        ranked.sort(key=lambda item: item[0])
        owners: dict[tuple[str, Any], Lease] = {}
        for _, key, lease in ranked:
            claims = self._claims(lease)
            winner = next((c for c in claims if c in owners), None)
            if winner is not None:
                what, val = winner
                new[key] = Skipped(key, f"conflict: {what} {val} already used by lease {owners[winner].key}")
                continue
            for claim in claims:
                owners[claim] = lease
            new[key] = lease

        changed: set[str] = set()
        # Keys that vanished (deleted) lose their standing.
        for key in contested - component:
            if self._set_status(key, None):
                changed.add(key)
        for key, status in new.items():
            if self._set_status(key, status):
                changed.add(key)
        return changed

    def _set_status(self, key: str, status: Status | None) -> bool:
        old_lease = self.valid.get(key)
        old_skip = self.skipped.get(key)
        if isinstance(status, Lease):
            if old_skip is not None:
                del self.skipped[key]
            if old_lease == status:
                return old_skip is not None
            if old_lease is not None and self._by_public_ip.get(old_lease.public_ip) == key:
                del self._by_public_ip[old_lease.public_ip]
            self.valid[key] = status
            self._by_public_ip[status.public_ip] = key
            return True
        if old_lease is not None:
            del self.valid[key]
            if self._by_public_ip.get(old_lease.public_ip) == key:
                del self._by_public_ip[old_lease.public_ip]
        if status is None:
            if old_skip is not None:
                del self.skipped[key]
            return old_lease is not None or old_skip is not None
        self.skipped[key] = status
        return old_lease is not None or old_skip != status

