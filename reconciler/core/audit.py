"""``audit``: the standing of every lease of a cluster, read from etcd or a snapshot, touching no node.

Pure: a snapshot (and, when known, the remaining TTL of each etcd lease) in, an ``Audit`` value out.
Every node runs the same ``validate_leases`` on the same keys, so what it skips, every node skips:
the audit says so once for the whole cluster, with the keys involved and what a node does about it,
instead of an operator reading one agent's log line by line.

What it reports (docs/audit-explain.md has the list with examples):

* leases every node skips: unparseable, outside Network, wrong SubnetLen, not vxlan, another VNI;
* conflicts: two leases claiming one subnet, VtepMAC or PublicIP (IPv6 alike): the one written
  first wins on every node, the other node's pods are unreachable;
* subnets that overlap without being equal, and subnets that contain a node's PublicIP (a route to
  them would carry the tunnel's own packets into the tunnel);
* PublicIPs inside the overlay Network;
* reservations (leases without a TTL), leases about to expire (their node stopped renewing), and
  leases outside SubnetMin..SubnetMax (routed, but not where flanneld allocates);
* how full the subnet pool is: flanneld allocates only inside SubnetMin..SubnetMax and fails to
  start a new node once it is full (a /10 of /24s holds 16,383), and nobody is told in advance.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from reconciler.core.config import NetworkConfig
from reconciler.core.leases import Lease, RawKV, _strip_prefix, parse_lease, validate_leases
from reconciler.core.errors import LeaseError

__all__ = ["Audit", "Finding", "LeaseStanding", "Pool", "audit_cluster", "EXPIRY_WINDOW",
           "POOL_WARN_FRACTION", "SEVERITIES"]

#: A lease whose TTL is below this has missed its renewals: flanneld renews an hour before expiry
#: (``--subnet-lease-renew-margin`` 60 min) and retries every minute; our agent keeps it alive with
#: etcd keepalive, so its TTL stays near the full 24 h.
EXPIRY_WINDOW = 30 * 60
#: The pool counts as nearly full from this fraction on.
POOL_WARN_FRACTION = 0.9
#: Ordered from worst; ``error`` and ``warning`` make the exit status 2, ``info`` does not.
SEVERITIES = ("error", "warning", "info")

# What a node does with a lease skipped for each reason.  The reasons are validate_leases' own
# words; the codes name them for scripts (JSON) and for the tests.
_SKIP_CODES = (
    (re.compile(r"conflict: (subnet|IPv6 subnet) "), "duplicate-subnet"),
    (re.compile(r"conflict: (VtepMAC|v6 VtepMAC) "), "duplicate-vtep-mac"),
    (re.compile(r"conflict: (PublicIP|PublicIPv6) "), "duplicate-public-ip"),
    (re.compile(r"(IPv6 )?subnet \S+ is outside (IPv6)?Network"), "outside-network"),
    (re.compile(r"(IPv6 )?subnet \S+ is a /\d+, but (IPv6)?SubnetLen"), "wrong-subnet-len"),
    (re.compile(r"BackendType "), "backend-mismatch"),
    (re.compile(r"(BackendV6Data\.)?VNI \S+ differs"), "vni-mismatch"),
    (re.compile(r"underlay capture: "), "underlay-capture"),
    (re.compile(r"unusable PublicIP: "), "unusable-public-ip"),
)
_EFFECT = {
    "unparseable": "every node skips it: no node routes to this subnet, so its pods are unreachable",
    "duplicate-subnet": "every node keeps the lease written first; this one is skipped, its pods are unreachable",
    "duplicate-vtep-mac": "every node keeps the lease written first; this one is skipped, its pods are unreachable",
    "duplicate-public-ip": "every node keeps the lease written first; this one is skipped, its pods are unreachable",
    "outside-network": "every node skips it: no node routes to this subnet",
    "wrong-subnet-len": "every node skips it: no node routes to this subnet",
    "backend-mismatch": "every VXLAN node skips it, as flanneld's vxlan backend does",
    "vni-mismatch": "every node skips it: its FDB entries would carry another VNI and the peer would drop them",
    "underlay-capture": "skipped where it would capture that node's underlay: a route to it would carry VXLAN "
                        "packets into the tunnel",
    "unusable-public-ip": "every node skips it: its PublicIP cannot be a peer's",
    "skipped": "every node skips it",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or fact worth knowing) with the keys involved and what a node does about it."""

    severity: str
    code: str
    keys: tuple[str, ...]
    message: str
    effect: str = ""

    def to_json(self) -> dict:
        return {"severity": self.severity, "code": self.code, "keys": list(self.keys),
                "message": self.message, "effect": self.effect}


@dataclass(frozen=True, slots=True)
class LeaseStanding:
    """One subnet key: ``ok``, ``reservation`` or ``skipped`` (with the reason), and its TTL if known."""

    key: str
    standing: str
    public_ip: str | None = None
    vtep_mac: str | None = None
    reason: str = ""
    ttl: int | None = None

    def to_json(self) -> dict:
        out = {"key": self.key, "standing": self.standing, "public_ip": self.public_ip,
               "vtep_mac": self.vtep_mac, "ttl": self.ttl}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class Pool:
    """Subnets flanneld can still hand out: SubnetLen subnets in SubnetMin..SubnetMax."""

    total: int
    used: int

    @property
    def free(self) -> int:
        return max(self.total - self.used, 0)

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 1.0


@dataclass(frozen=True)
class Audit:
    prefix: str
    revision: int
    config: NetworkConfig
    leases: tuple[LeaseStanding, ...]
    findings: tuple[Finding, ...]
    pool: Pool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not any(f.severity in ("error", "warning") for f in self.findings)

    def to_json(self) -> dict:
        return {
            "prefix": self.prefix, "revision": self.revision, "clean": self.clean,
            "counts": dict(self.counts),
            "pool": {"total": self.pool.total, "used": self.pool.used, "free": self.pool.free},
            "findings": [f.to_json() for f in self.findings],
            "leases": [s.to_json() for s in self.leases],
        }


def skip_code(reason: str) -> str:
    """The code of a ``validate_leases`` skip reason (``skipped`` for one this module does not know)."""
    for pattern, code in _SKIP_CODES:
        if pattern.match(reason):
            return code
    return "skipped"


def _conflict_winner(reason: str) -> str | None:
    m = re.search(r"already used by lease (\S+)$", reason)
    return m.group(1) if m else None


def audit_cluster(config: NetworkConfig, kvs: Iterable[RawKV], prefix: str, revision: int = 0,
                  ttls: Mapping[int, int] | None = None, expiry_window: int = EXPIRY_WINDOW) -> Audit:
    """The audit of one cluster.  ``ttls`` maps etcd lease ids to their remaining TTL in seconds
    (None: not known, e.g. a snapshot file); a lease id missing from a given map has expired."""
    prefix = _strip_prefix(prefix)
    base = prefix + "/subnets/"
    kvs = [kv for kv in kvs if kv.key.startswith(base)]
    leases, skipped = validate_leases(config, kvs, prefix)
    findings: list[Finding] = []
    by_key = {kv.key: kv for kv in kvs}
    # Every lease that parses, valid or not, for the cluster-wide checks; the valid ones come
    # parsed already, so only the skipped ones are parsed again.
    parsed: dict[str, Lease] = {base + lease.key: lease for lease in leases}
    for s in skipped:
        kv = by_key[s.key]
        try:
            parsed[kv.key] = parse_lease(kv.key[len(base):], kv.value, kv.lease)
        except LeaseError:
            pass

    def ttl_of(kv: RawKV) -> int | None:
        if ttls is None or kv.lease == 0:
            return None
        return ttls.get(kv.lease, 0)

    standings: list[LeaseStanding] = []
    for lease in leases:
        full = base + lease.key
        standings.append(LeaseStanding(full, "reservation" if lease.is_reservation else "ok", lease.public_ip,
                                       lease.vtep_mac, ttl=ttl_of(by_key[full])))
    for s in skipped:
        p = parsed.get(s.key)
        standings.append(LeaseStanding(s.key, "skipped", p.public_ip if p else None, p.vtep_mac if p else None,
                                       s.reason, ttl_of(by_key[s.key])))
        code = skip_code(s.reason) if p is not None else "unparseable"
        keys: tuple[str, ...] = (s.key,)
        winner = _conflict_winner(s.reason)
        if winner is not None:
            keys = (base + winner, s.key)
        findings.append(Finding("error", code, keys, s.reason, _EFFECT[code]))
    standings.sort(key=lambda s: s.key)

    findings += _overlaps(base, parsed)
    findings += _captures(base, config, parsed)
    for lease in leases:
        full = base + lease.key
        if lease.is_reservation:
            findings.append(Finding("info", "reservation", (full,), f"{lease.subnet} is reserved for "
                                    f"{lease.public_ip} (no TTL)", "kept until an operator deletes it"))
        elif (ttl := ttl_of(by_key[full])) is not None and ttl < expiry_window:
            findings.append(Finding("warning", "expiring", (full,),
                                    f"lease expires in {ttl} s: its node has not renewed it",
                                    "when it expires every node deletes the routes to this subnet and the "
                                    "subnet can be handed to another node"))
        if not _in_range(config, lease):
            findings.append(Finding("info", "outside-subnet-range", (full,),
                                    f"{lease.subnet} is outside SubnetMin..SubnetMax "
                                    f"({config.subnet_min}..{config.subnet_max})",
                                    "routed like any lease; flanneld never allocates there"))
    pool = _pool(config, leases)
    if pool.free == 0:
        findings.append(Finding("error", "pool-exhausted", (), f"all {pool.total} subnets of SubnetMin..SubnetMax "
                                f"are leased", "a new node cannot get a subnet: flanneld exits, our agent retries"))
    elif pool.fraction >= POOL_WARN_FRACTION:
        findings.append(Finding("warning", "pool-nearly-full", (), f"{pool.used} of {pool.total} subnets leased "
                                f"({pool.fraction:.0%}), {pool.free} free",
                                "widen Network or SubnetMin..SubnetMax before new nodes fail to join"))
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.code, f.keys))
    counts = {"leases": len(standings), "ok": sum(s.standing == "ok" for s in standings),
              "reservations": sum(s.standing == "reservation" for s in standings),
              "skipped": len(skipped)}
    return Audit(prefix, revision, config, tuple(standings), tuple(findings), pool, counts)


def _overlaps(base: str, parsed: Mapping[str, Lease]) -> list[Finding]:
    """Subnets that overlap without being equal (equal ones are conflicts, reported as such)."""
    out: list[Finding] = []
    for family in (4, 6):
        nets = []
        for key, lease in parsed.items():
            net = lease.subnet if family == 4 else lease.ipv6_subnet
            if net is not None:
                nets.append((int(net.network_address), int(net.broadcast_address), key, net))
        nets.sort()
        # A sweep: each subnet against the ones still open to its left.
        open_: list[tuple[int, str, object]] = []
        for first, last, key, net in nets:
            open_ = [o for o in open_ if o[0] >= first]
            for _, other_key, other in open_:
                if other != net:
                    out.append(Finding("error", "overlapping-subnets", tuple(sorted((other_key, key))),
                                       f"{other} and {net} overlap",
                                       "a node routes the overlap to whichever route is more specific"))
            open_.append((last, key, net))
    return out


def _captures(base: str, config: NetworkConfig, parsed: Mapping[str, Lease]) -> list[Finding]:
    """Subnets that contain a node's PublicIP, and PublicIPs inside the overlay Network."""
    out: list[Finding] = []
    # One map per prefix length present (a handful), so each PublicIP costs one lookup per length.
    by_len: dict[int, dict[int, str]] = {}
    for key, lease in parsed.items():
        by_len.setdefault(lease.subnet.prefixlen, {})[int(lease.subnet.network_address)] = key
    for key, lease in sorted(parsed.items()):
        ip = int(ipaddress.IPv4Address(lease.public_ip))
        for plen, nets in by_len.items():
            holder = nets.get(ip & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
            if holder is not None and holder != key:
                out.append(Finding("error", "subnet-captures-public-ip", (holder, key),
                                   f"{parsed[holder].subnet} contains the PublicIP {lease.public_ip} of {key}",
                                   "a route to that subnet through flannel would carry the tunnel's own packets "
                                   "into the tunnel: the node behind it becomes unreachable"))
        if config.network is not None and ipaddress.IPv4Address(ip) in config.network:
            out.append(Finding("error", "public-ip-in-network", (key,),
                               f"PublicIP {lease.public_ip} is inside the overlay Network {config.network}",
                               "VXLAN packets to this node would be routed into the overlay itself"))
    return out


def _in_range(config: NetworkConfig, lease: Lease) -> bool:
    if config.subnet_min is None or config.subnet_max is None:
        return True
    return config.subnet_min <= lease.subnet.network_address <= config.subnet_max


def _pool(config: NetworkConfig, leases: list[Lease]) -> Pool:
    if config.network is None or config.subnet_len is None or config.subnet_min is None \
            or config.subnet_max is None:
        return Pool(0, 0)
    step = 1 << (32 - config.subnet_len)
    lo, hi = int(config.subnet_min), int(config.subnet_max)
    total = (hi - lo) // step + 1 if hi >= lo else 0
    used = sum(1 for lease in leases if lo <= int(lease.subnet.network_address) <= hi)
    return Pool(total, used)
