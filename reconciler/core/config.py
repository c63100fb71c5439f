"""flanneld's network config (``<prefix>/config``): parse, default, validate.

Mirrors ``pkg/subnet/config.go`` (see docs/flannel-formats.md section 2):
keys are matched case-insensitively like Go's ``encoding/json``, unknown keys
are ignored, and every derived default (SubnetLen, SubnetMin, SubnetMax, the
IPv6 equivalents) is computed here so the rest of the agent sees one complete,
valid value.  An invalid config raises ``ConfigError`` naming the key.

The fields of a disabled address family (IPv6 by default) are ``None``: they
are still type-checked, as Go would decode them, but never derived.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Callable

from reconciler.core.errors import ConfigError

__all__ = ["NetworkConfig", "parse_network_config", "require_ipv4", "require_vxlan", "DEFAULT_VXLAN_PORT"]

#: The Linux kernel's VXLAN default port; flanneld's Port 0 means "don't send
#: the attribute", so the kernel applies this.
DEFAULT_VXLAN_PORT = 8472

#: VXLAN encapsulation overhead flanneld subtracts; the smallest IPv4 MTU
#: (RFC 791) must survive it, so an underlay MTU below 68 + 50 is useless.
_ENCAP_OVERHEAD = 50
_MIN_UNDERLAY_MTU = 68 + _ENCAP_OVERHEAD
_MAX_MTU = 65535  # the largest IP packet; no underlay can carry more


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    enable_ipv4: bool
    enable_ipv6: bool
    network: IPv4Network | None
    subnet_len: int | None
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    ipv6_network: IPv6Network | None
    ipv6_subnet_len: int | None
    ipv6_subnet_min: IPv6Address | None
    ipv6_subnet_max: IPv6Address | None
    backend_type: str           # "vxlan", or "udp" when Backend is absent (flannel's code default)
    vni: int                    # default 1
    port: int                   # 0 in the config means the kernel default: stored as 8472
    mtu: int | None             # Backend.MTU: the *underlay* MTU; None = ask the kernel / --underlay-mtu
    gbp: bool
    learning: bool
    direct_routing: bool
    enable_nftables: bool

    @property
    def device_name(self) -> str:
        return f"flannel.{self.vni}"

    @property
    def v6_device_name(self) -> str:
        return f"flannel-v6.{self.vni}"


# --------------------------------------------------------------------------
# Go encoding/json semantics, shared with leases.py.

class _Obj(tuple):
    """A JSON object as its ordered (key, value) pairs.

    Kept as pairs, not a dict, because Go decodes duplicate keys one after
    the other (each is type-checked, the last one wins) and matches them
    case-insensitively; a dict would hide both.
    """


_ABSENT: Any = object()  # "no value": the key is missing, or Go ignores its null


def _loads(raw: str | bytes) -> Any:
    """``json.loads`` restricted to what Go's decoder accepts.  Raises ``ValueError``."""
    if isinstance(raw, (bytes, bytearray)):
        # Strict UTF-8 without BOM removal: Go rejects a leading BOM too.
        raw = bytes(raw).decode("utf-8")
    try:
        return _DECODER.decode(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; Go (and RFC 8259) do not.
    raise ValueError(f"invalid JSON literal {name}")


_DECODER = json.JSONDecoder(object_pairs_hook=_Obj, parse_constant=_no_constant)


@lru_cache(maxsize=512)  # the same few keys come back in every lease
def _fold(key: str) -> str:
    """Go's case-insensitive key match (``bytes.EqualFold``) for our ASCII field
    names: ``lower()`` also maps the Kelvin sign to "k"; the long s is the one
    other character that folds onto an ASCII letter."""
    return key.lower().replace("\u017f", "s")


@lru_cache(maxsize=None)
def _wanted(names: tuple[str, ...]) -> dict[str, str]:
    return {_fold(n): n for n in names}


def _fields(obj: _Obj, names: tuple[str, ...]) -> dict[str, list[Any]]:
    """Every occurrence of each known field, in document order; unknown keys dropped."""
    wanted = _wanted(names)
    out: dict[str, list[Any]] = {}
    for key, value in obj:
        name = wanted.get(_fold(key))
        if name is not None:
            out.setdefault(name, []).append(value)
    return out


def _decode(occurrences: list[Any] | None, convert: Callable[[Any], Any]) -> Any:
    """Decode a field the way Go does: every occurrence is converted (so each is
    type-checked), the last non-ignored one wins, ``_ABSENT`` if none."""
    result = _ABSENT
    for value in occurrences or ():
        got = convert(value)
        if got is not _ABSENT:
            result = got
    return result


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, _Obj):
        return "an object"
    return "an array"


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python but not a JSON number; floats like 24.0
    # or 1e3 are numbers Go refuses to put in an int field.
    return type(value) is int


# --------------------------------------------------------------------------
# Field converters.  Each raises ConfigError naming its key.

def _bool(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return _ABSENT  # Go: null into a bool has no effect
        if type(value) is not bool:
            raise ConfigError(key, f"must be true or false, got {_json_type(value)}")
        return value
    return convert


def _uint(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return _ABSENT
        if not _is_int(value) or value < 0:
            raise ConfigError(key, f"must be a non-negative integer, got {_json_type(value)} {value!r}")
        return value
    return convert


def _int(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return _ABSENT
        if not _is_int(value):
            raise ConfigError(key, f"must be an integer, got {_json_type(value)} {value!r}")
        return value
    return convert


def _str(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return _ABSENT
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {_json_type(value)}")
        return value
    return convert


_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def _cidr(key: str, version: int) -> Callable[[Any], Any]:
    """A CIDR string, host bits masked like Go's ``net.ParseCIDR``.

    flannel's ``IP4Net``/``IP6Net`` are Go Unmarshalers, so even ``null`` is
    handed to the parser and rejected.
    """
    family = IPv4Network if version == 4 else IPv6Network

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be an IPv{version} CIDR string, got {_json_type(value)}")
        addr, sep, plen = value.partition("/")
        # Checked by hand because ipaddress is laxer than Go here: it takes
        # netmask forms (/255.255.0.0), zones (%eth0) and non-ASCII digits.
        if not sep or not _DIGITS.fullmatch(plen) or "%" in addr:
            raise ConfigError(key, f"{value!r} is not an IPv{version} CIDR")
        try:
            return family((addr, int(plen)), strict=False)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not an IPv{version} CIDR") from None
    return convert


def _ip4(key: str) -> Callable[[Any], Any]:
    """SubnetMin/SubnetMax: flannel's ``IP4`` rejects null; 0.0.0.0 means "default"."""
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be an IPv4 address string, got {_json_type(value)}")
        try:
            addr = IPv4Address(value)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not an IPv4 address") from None
        return None if int(addr) == 0 else addr
    return convert


def _ip6(key: str) -> Callable[[Any], Any]:
    """IPv6SubnetMin/Max are Go pointers: null resets them, and :: (IsEmpty) means "default"."""
    def convert(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or "%" in value:
            raise ConfigError(key, f"must be an IPv6 address string, got {value!r}")
        try:
            addr = IPv6Address(value)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not an IPv6 address") from None
        return None if int(addr) == 0 else addr
    return convert


_TOP = ("EnableIPv4", "EnableIPv6", "EnableNFTables", "Network", "IPv6Network", "SubnetMin",
        "SubnetMax", "IPv6SubnetMin", "IPv6SubnetMax", "SubnetLen", "IPv6SubnetLen", "Backend")
_BACKEND = ("Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting")


def _or(value: Any, default: Any) -> Any:
    return default if value is _ABSENT else value


# --------------------------------------------------------------------------

def parse_network_config(raw: str | bytes) -> NetworkConfig:
    """Parse the config JSON exactly as flanneld would.  Raises ``ConfigError``."""
    try:
        obj = _loads(raw)
    except ValueError as exc:
        raise ConfigError("<root>", f"not valid JSON: {exc}") from None
    if not isinstance(obj, _Obj):
        raise ConfigError("<root>", f"must be a JSON object, got {_json_type(obj)}")
    f = _fields(obj, _TOP)

    enable_ipv4 = _or(_decode(f.get("EnableIPv4"), _bool("EnableIPv4")), True)
    enable_ipv6 = _or(_decode(f.get("EnableIPv6"), _bool("EnableIPv6")), False)
    enable_nftables = _or(_decode(f.get("EnableNFTables"), _bool("EnableNFTables")), False)
    network = _or(_decode(f.get("Network"), _cidr("Network", 4)), None)
    ipv6_network = _or(_decode(f.get("IPv6Network"), _cidr("IPv6Network", 6)), None)
    subnet_min = _or(_decode(f.get("SubnetMin"), _ip4("SubnetMin")), None)
    subnet_max = _or(_decode(f.get("SubnetMax"), _ip4("SubnetMax")), None)
    ipv6_subnet_min = _or(_decode(f.get("IPv6SubnetMin"), _ip6("IPv6SubnetMin")), None)
    ipv6_subnet_max = _or(_decode(f.get("IPv6SubnetMax"), _ip6("IPv6SubnetMax")), None)
    # Go's uint zero value: an explicit 0 is the same as "not given".
    subnet_len = _or(_decode(f.get("SubnetLen"), _uint("SubnetLen")), 0)
    ipv6_subnet_len = _or(_decode(f.get("IPv6SubnetLen"), _uint("IPv6SubnetLen")), 0)

    backend = _parse_backend(f.get("Backend"))

    v4: tuple[Any, ...] = (None, None, None, None)
    if enable_ipv4:
        v4 = _derive(4, "", network, subnet_len, subnet_min, subnet_max)
    v6: tuple[Any, ...] = (None, None, None, None)
    if enable_ipv6:
        v6 = _derive(6, "IPv6", ipv6_network, ipv6_subnet_len, ipv6_subnet_min, ipv6_subnet_max)

    return NetworkConfig(
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        network=v4[0], subnet_len=v4[1], subnet_min=v4[2], subnet_max=v4[3],
        ipv6_network=v6[0], ipv6_subnet_len=v6[1], ipv6_subnet_min=v6[2], ipv6_subnet_max=v6[3],
        enable_nftables=enable_nftables,
        **backend,
    )


# Per family: (address bits, largest SubnetLen, largest Network prefix, default SubnetLen)
_FAMILY = {4: (32, 30, 28, 24), 6: (128, 126, 124, 64)}


def _derive(version: int, tag: str, network: Any, subnet_len: int, smin: Any, smax: Any) -> tuple[Any, ...]:
    """``CheckNetworkConfig`` for one family: defaults, then range and alignment checks.

    ``tag`` is "" or "IPv6", the prefix of the family's key names.
    """
    bits, max_len, max_prefix, default_len = _FAMILY[version]
    net_key, len_key, min_key, max_key = (tag + "Network", tag + "SubnetLen",
                                          tag + "SubnetMin", tag + "SubnetMax")
    # flannel's Empty(): a missing Network and 0.0.0.0/0 (or ::/0) look the same to it.
    if network is None or (int(network.network_address) == 0 and network.prefixlen == 0):
        raise ConfigError(net_key, f"required when EnableIPv{version} is true (missing, or the all-zero /0)")
    prefix = network.prefixlen
    if subnet_len:
        if subnet_len > max_len:
            raise ConfigError(len_key, f"{subnet_len} is too long: at most {max_len}")
        if subnet_len < prefix + 2:
            # The first subnet is never handed out, so fewer than four is useless.
            raise ConfigError(len_key, f"{subnet_len} is too short: {net_key} /{prefix} must hold at least "
                                       f"four subnets ({len_key} >= {prefix + 2})")
    elif prefix > max_prefix:
        raise ConfigError(net_key, f"/{prefix} is too small: the smallest useful network is /{max_prefix}")
    else:
        # A /24 (/64) each when that leaves at least four, else a quarter each.
        subnet_len = default_len if prefix <= default_len - 2 else prefix + 2

    size = 1 << (bits - subnet_len)
    base = int(network.network_address)
    addr_type = type(network.network_address)
    if smin is None:
        smin = addr_type(base + size)  # the first subnet is skipped (network address clash)
    elif smin not in network:
        raise ConfigError(min_key, f"{smin} is not inside {net_key} {network}")
    if smax is None:
        smax = addr_type(base + network.num_addresses - size)  # the last subnet
    elif smax not in network:
        raise ConfigError(max_key, f"{smax} is not inside {net_key} {network}")
    if int(smin) % size:
        raise ConfigError(min_key, f"{smin} is not on a /{subnet_len} boundary")
    if int(smax) % size:
        raise ConfigError(max_key, f"{smax} is not on a /{subnet_len} boundary")
    if smin > smax:
        raise ConfigError(min_key, f"{smin} is above {max_key} {smax}: no subnet can be allocated")
    return network, subnet_len, smin, smax


def _parse_backend(occurrences: list[Any] | None) -> dict[str, Any]:
    """The Backend object: the type (``parseBackendType``) and the vxlan fields (``VXLANConfig``).

    Go keeps Backend as raw JSON, so only its last occurrence counts.  The vxlan
    fields are checked whatever the type: only vxlan is supported anyway.
    """
    out: dict[str, Any] = dict(backend_type="udp", vni=1, port=DEFAULT_VXLAN_PORT, mtu=None,
                               gbp=False, learning=False, direct_routing=False)
    if not occurrences:
        return out  # flannel's code default, although its docs say vxlan
    raw = occurrences[-1]
    if raw is None:
        # Go keeps the literal "null": Type decodes to "", every field keeps its default.
        out["backend_type"] = ""
        return out
    if not isinstance(raw, _Obj):
        raise ConfigError("Backend", f"must be an object, got {_json_type(raw)}")
    f = _fields(raw, _BACKEND)
    # flanneld looks the backend up with strings.ToLower, so "VXLAN" is vxlan.
    out["backend_type"] = _or(_decode(f.get("Type"), _str("Backend.Type")), "").lower()

    vni = _or(_decode(f.get("VNI"), _int("Backend.VNI")), 0)
    if not 0 <= vni < 1 << 24:
        raise ConfigError("Backend.VNI", f"{vni} is not a VXLAN network identifier (1 .. {(1 << 24) - 1})")
    out["vni"] = vni or 1  # 0 is taken as "not given": the default VNI 1

    port = _or(_decode(f.get("Port"), _int("Backend.Port")), 0)
    if not 0 <= port <= 65535:
        raise ConfigError("Backend.Port", f"{port} is not a UDP port (1 .. 65535, or 0 for the kernel default)")
    out["port"] = port or DEFAULT_VXLAN_PORT

    mtu = _or(_decode(f.get("MTU"), _int("Backend.MTU")), 0)
    if mtu and not _MIN_UNDERLAY_MTU <= mtu <= _MAX_MTU:
        raise ConfigError("Backend.MTU", f"{mtu} is not a usable underlay MTU "
                                         f"({_MIN_UNDERLAY_MTU} .. {_MAX_MTU}; the overlay loses {_ENCAP_OVERHEAD})")
    out["mtu"] = mtu or None

    out["gbp"] = _or(_decode(f.get("GBP"), _bool("Backend.GBP")), False)
    out["learning"] = _or(_decode(f.get("Learning"), _bool("Backend.Learning")), False)
    out["direct_routing"] = _or(_decode(f.get("DirectRouting"), _bool("Backend.DirectRouting")), False)
    return out


def require_vxlan(cfg: NetworkConfig) -> None:
    """Refuse a config whose backend is not vxlan: the only one this agent implements.

    Kept apart from the parser so that tools (``snapshot``, diagnostics) can
    still read a cluster's config whatever its backend.
    """
    if cfg.backend_type == "vxlan":
        return
    if cfg.backend_type == "":
        got = "Backend.Type is missing"
    else:
        got = f"backend type {cfg.backend_type!r}"
        if cfg.backend_type == "udp":
            got += " (also flanneld's default when Backend is absent: write Backend.Type explicitly)"
    raise ConfigError("Backend.Type", f"{got}: only vxlan is supported")


def require_ipv4(cfg: NetworkConfig) -> None:
    """Refuse IPv6-only (``EnableIPv4: false``): flanneld's etcd mode cannot run it.

    Such a flanneld writes every lease as ``0.0.0.0-0&<v6>-<len>`` with
    ``PublicIP`` ``"0.0.0.0"`` and no ``BackendData``: all nodes then share
    one PublicIP, so its reuse-by-PublicIP step takes over another node's
    lease, and its allocation loop never ends once one lease exists (a /0
    overlaps everything).  A lease of ours in that form would be hijacked by
    the next flanneld; theirs cannot tell us which lease is whose.  So we
    refuse it up front (docs/dual-stack.md); dual stack works.
    """
    if cfg.enable_ipv4:
        return
    if cfg.enable_ipv6:
        why = ("IPv6-only is not supported with etcd: flanneld's etcd mode writes every such lease with "
               "PublicIP 0.0.0.0 under a 0.0.0.0-0 key, so nodes cannot tell their leases apart (flanneld "
               "takes over another node's lease, and never finishes allocating once one exists); "
               "run dual stack (EnableIPv4 and EnableIPv6 with Network and IPv6Network) instead")
    else:
        why = "both address families are disabled (EnableIPv4 and EnableIPv6 are false): nothing to run"
    raise ConfigError("EnableIPv4", why)
