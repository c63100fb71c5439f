"""Subnet leases as flanneld writes them under ``<prefix>/subnets/``.

Keys, values and their exact bytes follow docs/flannel-formats.md
sections 1 and 3.  Everything here is pure: the same parser serves the
``--leases-file`` snapshot and the live etcd client.

Parsing is as lenient as flanneld where flanneld would still use a lease
(case-insensitive JSON keys, any MAC form ``net.ParseMAC`` takes) and
stricter where a lease would make a peer unreachable or hijack one (loopback
PublicIPs, multicast VtepMACs, keys with host bits set).  One bad lease is a
``Skipped`` entry, never an error for the whole set.
"""
from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Callable, Iterable

from reconciler.core.config import NetworkConfig, _ABSENT, _Obj, _decode, _fields, _json_type, _loads
from reconciler.core.errors import LeaseError
from reconciler.core.underlay_guard import UnderlayGuard

__all__ = [
    "Lease",
    "LeaseSnapshot",
    "RawKV",
    "Skipped",
    "encode_lease_value",
    "lease_claims",
    "parse_lease",
    "parse_snapshot",
    "parse_subnet_key",
    "snapshot_to_json",
    "subnet_key",
    "validate_leases",
]


@dataclass(frozen=True, slots=True)
class RawKV:
    """One etcd key-value as read: the full key, the raw value string, and the etcd lease id (0 = none)."""

    key: str
    value: str
    lease: int = 0
    mod_revision: int = 0
    #: The revision that created the key (0: not known).  Tells a key overwritten in place from one
    #: deleted and created again (docs/decisions.md, "Our own key").  Not compared: the same bytes
    #: read twice are the same lease.
    create_revision: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Lease:
    """A parsed, individually valid lease.

    ``key`` is the subnet key (``10.244.1.0-24``, without the prefix).
    ``etcd_lease`` 0 means a reservation (no TTL).
    """

    key: str
    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    public_ip: str
    public_ipv6: str | None
    backend_type: str
    vni: int | None
    vtep_mac: str | None
    v6_vni: int | None = None
    v6_vtep_mac: str | None = None
    etcd_lease: int = 0

    @property
    def is_reservation(self) -> bool:
        return self.etcd_lease == 0


@dataclass(frozen=True, slots=True)
class Skipped:
    """A lease left out of the desired state, with the etcd key and why."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseSnapshot:
    prefix: str
    revision: int
    kvs: tuple[RawKV, ...]
    #: etcd's cluster id from the response header (0: not known, e.g. a snapshot file).
    cluster_id: int = 0


# --------------------------------------------------------------------------
# Keys

#: flanneld's own pattern (pkg/subnet/subnet.go), quirks kept on purpose so
#: that we see exactly the keys it sees: anchored only at the end (it is
#: matched against the full etcd key, prefix included), and two of the IPv4
#: dots unescaped.  ``\d`` is ASCII in Go; ``\Z`` is Go's ``$`` (Python's ``$``
#: would also match before a trailing newline).
_SUBNET_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?\Z", re.ASCII)


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """The subnets a key names: ``10.244.1.0-24`` or ``10.42.1.0-24&2001:cafe:42:1::-64``.

    The regex is flanneld's, so a key it would find is found here too; the
    captured text is then validated strictly, because the regex alone lets
    ``10.244.1x0-24`` through.  Beyond flanneld, keys with host bits set are
    refused: flanneld would route ``10.244.1.5/24`` as given, and the kernel
    refuses such a route.  Prefix lengths follow flanneld's ``ParseUint`` bit
    sizes (IPv4 at most 31, IPv6 at most 127).  Raises ``LeaseError``.
    """
    m = _SUBNET_KEY_RE.search(key)
    if m is None:
        raise LeaseError(key, "not a subnet key (want a.b.c.d-LEN, or a.b.c.d-LEN&v6addr-LEN)")
    ip4, len4, ip6, len6 = m.groups()
    subnet = _key_net(key, IPv4Address, IPv4Network, ip4, len4, 31)
    ipv6_subnet = _key_net(key, IPv6Address, IPv6Network, ip6, len6, 127) if ip6 is not None else None
    return subnet, ipv6_subnet


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(r"\.".join([_OCTET] * 4) + r"\Z", re.ASCII)


def _ipv4(text: str) -> IPv4Address:
    """``IPv4Address(text)`` with the same strictness (no leading zeros, like Go's
    ``ParseIP``), several times faster: 5,000 leases parse three addresses each."""
    m = _DOTTED_QUAD.match(text)
    if m is None:
        raise ValueError(text)
    a, b, c, d = map(int, m.groups())
    return IPv4Address(a << 24 | b << 16 | c << 8 | d)


def _key_net(key: str, addr_type: type, net_type: type, addr_text: str, len_text: str, max_len: int) -> Any:
    family = "IPv4" if addr_type is IPv4Address else "IPv6"
    try:
        addr = _ipv4(addr_text) if addr_type is IPv4Address else addr_type(addr_text)
    except ValueError:
        raise LeaseError(key, f"{addr_text!r} is not an {family} address") from None
    # Go's ParseUint takes leading zeros; the length check keeps int() cheap.
    plen = int(len_text) if len(len_text) <= 3 else max_len + 1
    if plen > max_len:
        raise LeaseError(key, f"bad {family} prefix length {len_text} (0 .. {max_len})")
    net = net_type((addr, plen), strict=False)
    if net.network_address != addr:
        raise LeaseError(key, f"not aligned: {addr}/{plen} has host bits set (the subnet is {net})")
    return net


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """flanneld's ``MakeSubnetKey``: ``10.244.1.0-24``, ``10.42.1.0-24&2001:cafe:42:1::-64``.

    ``ipaddress`` writes IPv6 in RFC 5952 form (lowercase, longest zero run
    compressed), the same text as Go's ``net.IP.String()``.
    """
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


# --------------------------------------------------------------------------
# MACs

_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")


def _go_parse_mac(text: str) -> bytes | None:
    """Go's ``net.ParseMAC``: 6, 8 or 20 bytes, as ``aa:bb..``, ``aa-bb..`` or ``aabb.ccdd..``.

    The lengths are fixed by the form, so a split on the separator that
    yields the right number of well-formed groups is exactly Go's check.
    """
    if len(text) < 14:
        return None
    if text[2] in ":-":
        sep, pattern, per_group = text[2], _HEX2, 1
    elif text[4] == ".":
        sep, pattern, per_group = ".", _HEX4, 2
    else:
        return None
    groups = text.split(sep)
    if len(groups) * per_group not in (6, 8, 20):
        return None
    if not all(pattern.fullmatch(g) for g in groups):
        return None
    return bytes.fromhex("".join(groups))


def _vtep_mac(text: str) -> str:
    """A usable 6-byte unicast VtepMAC in lowercase colon form.  Raises ``ValueError``."""
    mac = _go_parse_mac(text)
    if mac is None:
        raise ValueError(f"{text!r} is not a MAC address")
    if len(mac) != 6:
        raise ValueError(f"{text!r} is a {len(mac)}-byte address; a VXLAN VTEP needs a 6-byte MAC")
    if mac[0] & 1:
        raise ValueError(f"{text!r} is a multicast MAC; a VTEP MAC must be unicast")
    if not any(mac):
        raise ValueError(f"{text!r} is the all-zero MAC")
    # Go's net.HardwareAddr.String() form, which is also how the kernel reports it.
    return ":".join(f"{b:02x}" for b in mac)


# --------------------------------------------------------------------------
# Values

_UINT32 = 1 << 32


def encode_lease_value(
    public_ip: str,
    vtep_mac: str,
    vni: int,
    public_ipv6: str | None = None,
    v6_vtep_mac: str | None = None,
    v6_vni: int | None = None,
    backend_type: str = "vxlan",
) -> str:
    """The value flanneld writes for its lease, byte for byte (docs/flannel-formats.md section 3).

    Compact JSON, no trailing newline, fields in Go struct order; PublicIPv6
    is always present (a Go pointer without omitempty), BackendType is
    omitted when empty and BackendV6Data when there is no v6 VTEP.  Peers
    running flanneld compare nothing byte-wise, but etcdctl users, our own
    "is my lease current" check and the tests do.  Raises ``ValueError`` on
    an argument no lease could carry.
    """
    obj: dict[str, Any] = {
        "PublicIP": _usable_ipv4(public_ip),
        "PublicIPv6": None if public_ipv6 is None else _usable_ipv6(public_ipv6),
    }
    if backend_type:
        obj["BackendType"] = backend_type
    obj["BackendData"] = {"VNI": _encode_vni(vni), "VtepMAC": _vtep_mac(vtep_mac)}
    if v6_vtep_mac is not None:
        if public_ipv6 is None:
            raise ValueError("a v6 VtepMAC needs a PublicIPv6 (the FDB destination of the v6 device)")
        obj["BackendV6Data"] = {"VNI": _encode_vni(vni if v6_vni is None else v6_vni),
                                "VtepMAC": _vtep_mac(v6_vtep_mac)}
    elif v6_vni is not None:
        raise ValueError("v6_vni given without v6_vtep_mac")
    return json.dumps(obj, separators=(",", ":"))


def _encode_vni(vni: int) -> int:
    if type(vni) is not int or not 0 <= vni < _UINT32:
        raise ValueError(f"VNI {vni!r} is not a 32-bit unsigned integer")
    return vni


_VALUE_FIELDS = ("PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data")
_BACKEND_FIELDS = ("VNI", "VtepMAC")


def _fast_parser() -> Callable[[str, str, int], Lease | None] | None:
    """The compiled parser of flanneld's own lease form, if built (``_fastpath/_leases.pyx``)."""
    try:
        import _fastpath
    except ImportError:  # pragma: no cover - the package ships with the project
        return None
    return _fastpath.parse_canonical


#: Set on first use.  ``tests/test_leases_fast.py`` runs with it set to None (the pure path alone)
#: and with the compiled parser, and holds the two equal.
_FAST: Any = False


def parse_lease(key: str, value: str, etcd_lease: int = 0) -> Lease:
    """One lease from its subnet key (no prefix) and its raw value.  Raises ``LeaseError``.

    Values in exactly the form flanneld writes take the compiled parser when it is built; every
    other value, and every error, is the pure parser's (``parse_lease_pure``), the specification.
    """
    global _FAST
    if _FAST is False:
        _FAST = _fast_parser()
    if _FAST is not None:
        lease = _FAST(key, value, etcd_lease)
        if lease is not None:
            return lease
    return parse_lease_pure(key, value, etcd_lease)


def parse_lease_pure(key: str, value: str, etcd_lease: int = 0) -> Lease:
    """The pure parser, the specification: one lease from its subnet key (no prefix) and its raw
    value.  Raises ``LeaseError``.

    JSON keys match case-insensitively and duplicates resolve last-wins, as
    in Go.  A lease whose BackendType is not "vxlan" parses (only its
    addresses are checked), so that the caller can report it for what it is.
    The key and value must agree on dual stack: a half-dual-stack lease
    would give a peer a route without the FDB entry that makes it work.
    """
    subnet, ipv6_subnet = parse_subnet_key(key)
    try:
        obj = _loads(value)
    except ValueError as exc:
        raise LeaseError(key, f"value is not valid JSON: {exc}") from None
    if not isinstance(obj, _Obj):
        raise LeaseError(key, f"value must be a JSON object, got {_json_type(obj)}")
    f = _fields(obj, _VALUE_FIELDS)

    public_ip = _decode(f.get("PublicIP"), _public_ip(key))
    if public_ip is _ABSENT:
        raise LeaseError(key, "PublicIP is missing")
    public_ipv6 = _decode(f.get("PublicIPv6"), _public_ipv6(key))
    if public_ipv6 is _ABSENT:
        public_ipv6 = None
    backend_type = _decode(f.get("BackendType"), _string(key, "BackendType"))
    if backend_type is _ABSENT or backend_type == "":
        raise LeaseError(key, "BackendType is missing")
    # Raw JSON in Go: only the last occurrence counts, and a literal null is "present but empty".
    v4_data = f["BackendData"][-1] if "BackendData" in f else _ABSENT
    v6_data = f["BackendV6Data"][-1] if "BackendV6Data" in f else _ABSENT

    if ipv6_subnet is None:
        if v6_data is not _ABSENT and v6_data is not None:
            raise LeaseError(key, "key/value mismatch: the value has BackendV6Data but the key has no IPv6 subnet")
    elif public_ipv6 is None:
        raise LeaseError(key, "key/value mismatch: the key has an IPv6 subnet but the value has no PublicIPv6")

    vni = vtep_mac = v6_vni = v6_vtep_mac = None
    if backend_type == "vxlan":
        vni, vtep_mac = _backend_data(key, "BackendData", v4_data)
        if ipv6_subnet is not None:
            if v6_data is _ABSENT:
                raise LeaseError(key, "key/value mismatch: the key has an IPv6 subnet "
                                      "but the value has no BackendV6Data")
            v6_vni, v6_vtep_mac = _backend_data(key, "BackendV6Data", v6_data)

    return Lease(
        key=key, subnet=subnet, ipv6_subnet=ipv6_subnet,
        public_ip=public_ip, public_ipv6=public_ipv6, backend_type=backend_type,
        vni=vni, vtep_mac=vtep_mac, v6_vni=v6_vni, v6_vtep_mac=v6_vtep_mac,
        etcd_lease=etcd_lease,
    )


def _usable_ipv4(value: Any) -> str:
    """A PublicIP a peer can send VXLAN packets to.  Raises ``ValueError``."""
    # flannel's IP4 is a Go Unmarshaler, so null is an error there as here.
    if not isinstance(value, str):
        raise ValueError(f"PublicIP must be an IPv4 address string, got {_json_type(value)}")
    try:
        addr = _ipv4(value)
    except ValueError:
        raise ValueError(f"PublicIP {value!r} is not an IPv4 address") from None
    # Any of these as an FDB destination sends the peer's traffic nowhere,
    # or back to ourselves; 0.0.0.0 is what a v6-only flanneld writes.
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or int(addr) == 0xFFFFFFFF:
        raise ValueError(f"PublicIP {addr} is not a unicast address a peer can be reached at")
    return str(addr)


def _usable_ipv6(value: Any) -> str:
    """A PublicIPv6 a peer can send VXLAN packets to, in Go's text form.  Raises ``ValueError``."""
    # "%" is refused by hand: ipaddress takes zone ids, Go's ParseIP does not.
    if not isinstance(value, str) or "%" in value:
        raise ValueError(f"PublicIPv6 must be null or an IPv6 address string, got {value!r}")
    try:
        addr = IPv6Address(value)
    except ValueError:
        raise ValueError(f"PublicIPv6 {value!r} is not an IPv6 address") from None
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        raise ValueError(f"PublicIPv6 {addr} is not a unicast address a peer can be reached at")
    if addr.ipv4_mapped is not None:
        # Go would write it as ::ffff:a.b.c.d and Python as ::ffff:xxxx:xxxx: no
        # byte-exact form exists, and it is an IPv4 peer anyway.
        raise ValueError(f"PublicIPv6 {value!r} is an IPv4-mapped address")
    return str(addr)


def _public_ip(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return _usable_ipv4(value)
        except ValueError as exc:
            raise LeaseError(key, str(exc)) from None
    return convert


def _public_ipv6(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return None  # a Go pointer: null resets it to "no IPv6"
        try:
            return _usable_ipv6(value)
        except ValueError as exc:
            raise LeaseError(key, str(exc)) from None
    return convert


def _string(key: str, name: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return _ABSENT
        if not isinstance(value, str):
            raise LeaseError(key, f"{name} must be a string, got {_json_type(value)}")
        return value
    return convert


def _backend_data(key: str, name: str, data: Any) -> tuple[int, str]:
    """``{"VNI": n, "VtepMAC": "..."}`` (Go's ``vxlanLeaseAttrs``)."""
    if data is _ABSENT:
        raise LeaseError(key, f"{name} is missing (a vxlan lease needs its VtepMAC)")
    if not isinstance(data, _Obj):
        raise LeaseError(key, f"{name} must be an object, got {_json_type(data)}")
    f = _fields(data, _BACKEND_FIELDS)

    def vni_of(value: Any) -> Any:
        if value is None:
            return _ABSENT
        if type(value) is not int or not 0 <= value < _UINT32:
            raise LeaseError(key, f"{name}.VNI {value!r} is not a non-negative 32-bit integer")
        return value

    def mac_of(value: Any) -> Any:
        # Go's hardwareAddr is an Unmarshaler that wants a quoted string: null fails.
        if not isinstance(value, str):
            raise LeaseError(key, f"{name}.VtepMAC must be a MAC address string, got {_json_type(value)}")
        try:
            return _vtep_mac(value)
        except ValueError as exc:
            raise LeaseError(key, f"{name}.VtepMAC {exc}") from None

    vni = _decode(f.get("VNI"), vni_of)
    if vni is _ABSENT:
        raise LeaseError(key, f"{name}.VNI is missing")
    mac = _decode(f.get("VtepMAC"), mac_of)
    if mac is _ABSENT:
        raise LeaseError(key, f"{name}.VtepMAC is missing")
    return vni, mac


# --------------------------------------------------------------------------
# Snapshot file (--leases-file, `flannel-reconciler snapshot`)

def parse_snapshot(text: str | bytes) -> LeaseSnapshot:
    """Read a leases file: ``{"prefix", "revision", "kvs": [{"key", "value", "lease"?, "mod_revision"?}]}``.

    ``value`` is the raw string stored in etcd (lease JSON as text, not an
    object), so that a file can hold exactly what a cluster holds, broken
    values included.  A trailing "/" is dropped from the prefix, as
    flanneld's path joins do.  Unknown fields are ignored (etcd's own
    create_revision/version may ride along).  Raises ``ValueError``.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"leases snapshot: not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("leases snapshot: nested too deeply to be a snapshot") from None
    if not isinstance(data, dict):
        raise ValueError("leases snapshot: must be a JSON object")
    prefix = data.get("prefix")
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("leases snapshot: 'prefix' must be a non-empty string")
    revision = _count(data.get("revision"), "leases snapshot: 'revision'")
    rows = data.get("kvs")
    if not isinstance(rows, list):
        raise ValueError("leases snapshot: 'kvs' must be a list")

    kvs: list[RawKV] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"leases snapshot: kvs[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: must be an object")
        key, value = row.get("key"), row.get("value")
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: 'key' must be a non-empty string")
        if not isinstance(value, str):
            raise ValueError(f"{where}: 'value' must be a string (the raw text stored in etcd)")
        if key in seen:
            raise ValueError(f"{where}: duplicate key {key!r}")
        seen.add(key)
        kvs.append(RawKV(
            key=key, value=value,
            lease=_count(row.get("lease", 0), f"{where}: 'lease'"),
            mod_revision=_count(row.get("mod_revision", 0), f"{where}: 'mod_revision'"),
        ))
    return LeaseSnapshot(prefix=_strip_prefix(prefix), revision=revision, kvs=tuple(kvs))


def _count(value: Any, where: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def _strip_prefix(prefix: str) -> str:
    # "/coreos.com/network/" and "/coreos.com/network" name the same keys in flanneld.
    return prefix.rstrip("/")


def snapshot_to_json(snap: LeaseSnapshot) -> str:
    """The leases file form of a snapshot, the inverse of ``parse_snapshot``.

    Pretty (2-space indent), every field written, rows sorted by key, a
    final newline: two snapshots of the same state give the same bytes, so
    the files diff cleanly.
    """
    rows = [
        {"key": kv.key, "value": kv.value, "lease": kv.lease, "mod_revision": kv.mod_revision}
        for kv in sorted(snap.kvs, key=lambda kv: kv.key)
    ]
    doc = {"prefix": snap.prefix, "revision": snap.revision, "kvs": rows}
    return json.dumps(doc, indent=2) + "\n"


# --------------------------------------------------------------------------
# The set of peers

def validate_leases(
    config: NetworkConfig, kvs: Iterable[RawKV], prefix: str, guard: UnderlayGuard | None = None
) -> tuple[list[Lease], list[Skipped]]:
    """The usable leases of a snapshot, and every other subnet key with the reason it was left out.

    ``kvs`` may be everything under the prefix: ``<prefix>/config`` and keys
    outside ``<prefix>/subnets/`` are ignored silently.  A lease is skipped
    when it does not parse, or does not fit the config: subnet outside
    Network or not SubnetLen long (IPv6 alike, when enabled), BackendType
    not vxlan, VNI not the config's.  SubnetMin/SubnetMax are *not*
    enforced: flanneld only allocates within them, and still routes to a
    peer outside them (e.g. after the operator narrowed the range).

    Conflicts -- two leases claiming the same subnet, VtepMAC or PublicIP
    (and with IPv6 enabled, IPv6 subnet, v6 VtepMAC or PublicIPv6) -- are
    decided for the lease written first: lowest mod_revision, ties broken by
    the subnet key.  The established node keeps its traffic and a newcomer
    with a duplicated MAC or address cannot hijack it (flannel #1289).  A
    loser claims nothing, so it cannot knock out a third lease.  Because
    leases are ranked, not taken in input order, the result does not depend
    on the order of ``kvs``.

    With ``guard`` (this node's underlay facts), a peer lease that would
    capture the underlay, or whose PublicIP cannot be a peer, is skipped too
    (``underlay_guard.UnderlayGuard.peer_reason``).

    Returns leases sorted by key and skips sorted by etcd key; O(n log n).
    """
    base = _strip_prefix(prefix) + "/subnets/"
    skipped: list[Skipped] = []
    ranked: list[tuple[tuple[Any, ...], RawKV, Lease]] = []
    for kv in kvs:
        if not kv.key.startswith(base):
            continue
        try:
            lease = parse_lease(kv.key[len(base):], kv.value, kv.lease)
        except LeaseError as exc:
            skipped.append(Skipped(kv.key, exc.reason))
            continue
        reason = _misfit(config, lease, guard)
        if reason is not None:
            skipped.append(Skipped(kv.key, reason))
            continue
        # The value and lease id only break ties between duplicated keys, which
        # a real etcd cannot hold, so that even such input sorts one way.
        ranked.append(((kv.mod_revision, lease.key, kv.key, kv.value, kv.lease), kv, lease))

    ranked.sort(key=lambda item: item[0])
    # claim kind -> claimed value -> the lease holding it.  One dict per kind, looked up by the
    # value itself: a (kind, value) tuple per claim hashed the subnet (a Python-level hash) once
    # per lookup and once per insert, a third of this function's time at 5,000 leases.
    owners: collections.defaultdict[str, dict[Any, Lease]] = collections.defaultdict(dict)
    leases: list[Lease] = []
    v6 = config.enable_ipv6
    for _, kv, lease in ranked:
        claims = lease_claims(lease, v6)
        holder = None
        for what, val in claims:
            holder = owners[what].get(val)
            if holder is not None:
                skipped.append(Skipped(kv.key, f"conflict: {what} {val} already used by lease {holder.key}"))
                break
        if holder is not None:
            continue
        for what, val in claims:
            owners[what][val] = lease
        leases.append(lease)

    leases.sort(key=lambda lease: lease.key)
    skipped.sort(key=lambda s: (s.key, s.reason))
    return leases, skipped


def lease_claims(lease: Lease, v6: bool) -> list[tuple[str, Any]]:
    """What ``lease`` claims for itself alone, in the order conflicts are reported: its subnet,
    VtepMAC and PublicIP, and with ``v6`` (the config's EnableIPv6) and an IPv6 subnet their
    IPv6 twins.  ``validate_leases`` and ``LeaseIndex`` decide conflicts on these."""
    claims: list[tuple[str, Any]] = [("subnet", lease.subnet), ("VtepMAC", lease.vtep_mac),
                                     ("PublicIP", lease.public_ip)]
    if v6 and lease.ipv6_subnet is not None:
        claims += [("IPv6 subnet", lease.ipv6_subnet), ("v6 VtepMAC", lease.v6_vtep_mac),
                   ("PublicIPv6", lease.public_ipv6)]
    return claims


def _misfit(config: NetworkConfig, lease: Lease, guard: UnderlayGuard | None = None) -> str | None:
    """Why a parsed lease does not fit the config (or, with ``guard``, this node's underlay), or None."""
    if config.network is not None:
        if not _inside(lease.subnet, config.network):
            return f"subnet {lease.subnet} is outside Network {config.network}"
        if lease.subnet.prefixlen != config.subnet_len:
            return f"subnet {lease.subnet} is a /{lease.subnet.prefixlen}, but SubnetLen is {config.subnet_len}"
    if config.enable_ipv6 and lease.ipv6_subnet is not None and config.ipv6_network is not None:
        if not _inside(lease.ipv6_subnet, config.ipv6_network):
            return f"IPv6 subnet {lease.ipv6_subnet} is outside IPv6Network {config.ipv6_network}"
        if lease.ipv6_subnet.prefixlen != config.ipv6_subnet_len:
            return (f"IPv6 subnet {lease.ipv6_subnet} is a /{lease.ipv6_subnet.prefixlen}, "
                    f"but IPv6SubnetLen is {config.ipv6_subnet_len}")
    if lease.backend_type != "vxlan":
        # flanneld's vxlan backend ignores such leases the same way.
        return f"BackendType {lease.backend_type!r} is not vxlan"
    # flanneld never compares VNIs; we do, because our FDB entries carry our
    # own VNI and a peer listening on another one would drop every packet.
    if lease.vni != config.vni:
        return f"VNI {lease.vni} differs from the config's VNI {config.vni}"
    if config.enable_ipv6 and lease.ipv6_subnet is not None and lease.v6_vni != config.vni:
        return f"BackendV6Data.VNI {lease.v6_vni} differs from the config's VNI {config.vni}"
    if guard is not None:
        return guard.peer_reason(lease)
    return None


def _inside(subnet: Any, network: Any) -> bool:
    """``subnet.subnet_of(network)`` in integer arithmetic: the ipaddress version
    computes (and caches) broadcast addresses on every fresh lease object."""
    shift = network.max_prefixlen - network.prefixlen
    return (subnet.prefixlen >= network.prefixlen
            and int(subnet.network_address) >> shift == int(network.network_address) >> shift)
