"""The flag table: every option of the agent-facing commands, in one place.

``main.py`` and ``agent.py`` build their argparse parsers from ``FLAGS``;
nothing else defines an option of ``plan``/``apply``/``show``/``run``/
``snapshot``.  Each flag has a name, a parser that turns its text into a
checked value (or raises ``ValueError`` with the reason), a default, help
text, the ``FLANNELD_<FLAG>`` variable it can also come from, and its
relation to flanneld (``docs/flags.md`` is the table for operators).

flanneld's command line is Go's ``flag`` package, so systemd units written
for it say ``-etcd-endpoints=URL`` or ``-etcd-endpoints URL`` with one dash,
and boolean flags take Go's ``ParseBool`` words and never the next word.
``go_style_argv`` rewrites such an argv into argparse's form before argparse
sees it; the values are then resolved by ``resolve``: the command line wins,
then a non-empty ``FLANNELD_<FLAG>`` (flanneld's own rule: an empty
variable counts as unset), then the default.

The flags of flanneld that need the Kubernetes API are refused, on the
command line and in the environment, with the reason (``UNSUPPORTED``); a
value equal to flanneld's default asks for nothing and is accepted.  klog's
``-vmodule`` and ``-log_backtrace_at`` are accepted and change nothing
(status "ignored"), so that a manifest carrying them still starts.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from reconciler.core.errors import ReconcilerError

__all__ = [
    "CONFLICTS",
    "FLAGS",
    "UNSUPPORTED",
    "Flag",
    "FlagError",
    "Unsupported",
    "flags_for",
    "go_bool",
    "go_style_argv",
    "ignored_notes",
    "klog_level",
    "log_level_of",
    "suggest",
    "one_line",
    "resolve",
]

#: The words Go's ``strconv.ParseBool`` accepts, and nothing else.
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")

ENV_PREFIX = "FLANNELD_"

#: The underlay MTU range, the same as the config's Backend.MTU: VXLAN over
#: IPv4 takes 50 bytes, and the overlay must still carry IPv4's minimum of 68.
MIN_UNDERLAY_MTU = 68 + 50
MAX_MTU = 65535
#: Below a second a resync is a busy loop (a cycle is a dump and a diff).
MIN_RESYNC_SECONDS = 1.0
MAX_SECONDS = 86400.0


class FlagError(ReconcilerError):
    """A flag or ``FLANNELD_*`` value is unusable; the message names it."""


def one_line(text: str) -> str:
    """``text`` with control characters escaped, so that an error is one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# --------------------------------------------------------------------------
# Value parsers: text -> checked value, or ValueError(reason)

def go_bool(text: str) -> bool:
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise ValueError("not a boolean (Go's words: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)")


def _go_int(text: str) -> int:
    # Go's flag ints take base prefixes (0x10, 0o17, 0b1); so does int(x, 0),
    # except for a leading zero, which base 10 reads as Go's decimal-looking form.
    for base in (10, 0):
        try:
            return int(text, base)
        except ValueError:
            pass
    raise ValueError("not an integer")


def int_range(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        n = _go_int(text)
        if not lo <= n <= hi:
            raise ValueError(f"{what} must be between {lo} and {hi}")
        return n
    return parse


def klog_level(text: str) -> int:
    """klog's ``-v``: a decimal verbosity; what it means here is ``log_level_of``."""
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError("not a klog verbosity (a whole number, 0 or more)") from None
    if not 0 <= n <= 2**31 - 1:
        raise ValueError("a klog verbosity is a whole number, 0 or more")
    return n


def log_level_of(v: int) -> str:
    """klog's ``-v`` as a log level: 0 info, 1 and more debug (flanneld logs its
    per-event detail from -v=1 up; docs/flags.md)."""
    return "debug" if v >= 1 else "info"


def seconds(lo: float, hi: float = MAX_SECONDS) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            s = float(text)
        except ValueError:
            raise ValueError("not a number of seconds") from None
        if not math.isfinite(s) or not lo <= s <= hi:
            raise ValueError(f"seconds must be between {lo:g} and {hi:g}")
        return s
    return parse


def choice(*words: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in words:
            raise ValueError("must be one of " + ", ".join(words))
        return text
    return parse


def _text(text: str) -> str:
    return text


def _nonempty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Go's string flags treat "" as unset: so do we, for the optional ones."""
    def wrapped(text: str) -> Any:
        return parse(text) if text else None
    return wrapped


def public_ipv4(text: str) -> str:
    """An address peers can send VXLAN packets to (the lease's PublicIP)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IPv4 address") from None
    if addr.version != 4:
        raise ValueError("an IPv6 address; the IPv6 PublicIP is --public-ipv6")
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr == ipaddress.IPv4Address(0xFFFFFFFF):
        raise ValueError("not a unicast address other nodes can reach (unspecified, loopback, "
                         "multicast or broadcast)")
    return str(addr)


def public_ipv6(text: str) -> str:
    if "%" in text:
        raise ValueError("a zone index cannot travel in a lease")
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError("not an IPv6 address") from None
    if (addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local
            or addr.ipv4_mapped is not None):
        raise ValueError("not a global unicast address other nodes can reach")
    return str(addr)


def any_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("not an IP address") from None


#: The kernel's dev_valid_name(): 1-15 bytes, no "/", ":" or whitespace, not "." or "..".
_IFNAME = re.compile(r"[^/:\s]{1,15}")


def ifname(text: str) -> str:
    if not _IFNAME.fullmatch(text) or text in (".", "..") or len(text.encode()) > 15:
        raise ValueError("not an interface name (1-15 characters, no '/', ':' or whitespace)")
    return text


def iface(text: str) -> str:
    """flanneld's --iface: an interface name or an address it holds."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return ifname(text)
    except ValueError:
        raise ValueError("neither an IP address nor an interface name") from None


def regex(text: str) -> str:
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


def netns_name(text: str) -> str:
    # ip-netns keeps namespaces as files in /run/netns: a name is one path component.
    if not text or "/" in text or text in (".", "..") or "\0" in text or len(text.encode()) > 255:
        raise ValueError("not a network namespace name (one path component, as ip netns names it)")
    return text


def readable_file(text: str) -> str:
    if not text:
        raise ValueError("empty file name")
    if "\0" in text:
        raise ValueError("a file name cannot hold a NUL byte")
    if os.path.isdir(text):
        raise ValueError("is a directory, not a file")
    if not os.path.exists(text):
        raise ValueError("no such file")
    if not os.access(text, os.R_OK):
        raise ValueError("not readable")
    return text


def writable_path(text: str) -> str:
    if not text:
        raise ValueError("empty file name")
    if "\0" in text:
        raise ValueError("a file name cannot hold a NUL byte")
    if os.path.isdir(text):
        raise ValueError("is a directory; name a file")
    return text


def any_cidr(text: str) -> str:
    """An IPv4 or IPv6 prefix (host bits allowed: ``198.18.0.7/24`` names the segment 198.18.0.0/24)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP prefix (want a.b.c.d/len)") from None


def endpoints(text: str) -> tuple[str, ...]:
    """flanneld's comma-separated etcd URLs (a missing scheme means http://)."""
    from urllib.parse import urlsplit

    out = []
    for item in text.split(","):
        url = item.strip()
        if not url:
            continue
        full = url if "://" in url else "http://" + url
        try:
            parts = urlsplit(full)
            parts.port  # noqa: B018 - raises ValueError on a port out of range
        except ValueError as exc:
            raise ValueError(f"bad endpoint {url!r}: {exc}") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad endpoint {url!r}: expected http://host:port or https://host:port")
        out.append(url)
    if not out:
        raise ValueError("no endpoint given")
    return tuple(out)


# --------------------------------------------------------------------------
# The table

#: Which commands take which group of flags.
SOURCE = frozenset({"plan", "apply", "show", "run", "snapshot", "audit", "explain"})
NODE = frozenset({"plan", "apply", "show", "run", "explain"})
AGENT = SOURCE
RUN = frozenset({"run"})

#: ``status``: "flanneld" a flanneld flag we implement; "ours" ours only;
#: "ignored" a flanneld flag accepted and checked that changes nothing here
#: (klog's per-file knobs: a note on stderr says so when one is given).
STATUSES = ("flanneld", "ours", "ignored")


@dataclass(frozen=True)
class Flag:
    name: str                          # the long name, without dashes
    help: str
    parse: Callable[[str], Any]        # text -> value; ValueError(reason)
    commands: frozenset[str]
    default: Any = None
    status: str = "flanneld"
    kind: str = "value"                # "value", "bool" (Go's -flag / -flag=word) or "list" (repeatable)
    group: str = "this node"
    metavar: str | None = None
    short: str | None = None           # an extra short option (snapshot's -o)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Unsupported:
    """A flanneld flag this agent refuses, and why."""

    name: str
    why: str
    default: str = ""                  # flanneld's default, as text: giving it asks for nothing
    kind: str = "value"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    def harmless(self, text: str) -> bool:
        if self.kind == "bool":
            try:
                return go_bool(text) == go_bool(self.default)
            except ValueError:
                return False
        return text == self.default

    def refusal(self) -> str:
        return f"flanneld flag -{self.name} is not supported by flannel-reconciler: {self.why}"


_SRC = "lease source (a snapshot file, or etcd)"
_OUT = "output"
_AGENT = "agent"

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"

FLAGS: tuple[Flag, ...] = (
    # lease source
    Flag("leases-file", "read the config and leases from this snapshot file instead of etcd",
         readable_file, SOURCE - RUN, status="ours", group=_SRC, metavar="FILE"),
    Flag("etcd-endpoints", "comma-separated etcd URLs", endpoints, SOURCE,
         default=endpoints(DEFAULT_ENDPOINTS), group=_SRC, metavar="URLS"),
    Flag("etcd-prefix", "etcd key prefix of the network (config and subnets below it)", _nonempty, SOURCE,
         default=DEFAULT_PREFIX, group=_SRC, metavar="PREFIX"),
    Flag("etcd-cafile", "CA certificate file that signs etcd's server certificates",
         _optional(readable_file), SOURCE, group=_SRC, metavar="FILE"),
    Flag("etcd-certfile", "client certificate file for etcd (TLS only when with --etcd-keyfile)",
         _optional(readable_file), SOURCE, group=_SRC, metavar="FILE"),
    Flag("etcd-keyfile", "client key file for etcd", _optional(readable_file), SOURCE, group=_SRC,
         metavar="FILE"),
    Flag("etcd-username", "username for etcd authentication", _optional(_text), SOURCE, group=_SRC),
    Flag("etcd-password", "password for etcd authentication", _optional(_text), SOURCE, group=_SRC),
    Flag("etcd-timeout", "seconds per etcd call", seconds(0.001, 3600.0), SOURCE, default=5.0,
         status="ours", group=_SRC, metavar="SECONDS"),
    # this node
    Flag("public-ip", "this node's PublicIP, the IPv4 address peers send VXLAN packets to "
         "(default: the underlay interface's address)", _optional(public_ipv4), NODE, metavar="IP"),
    Flag("public-ipv6", "this node's IPv6 PublicIP (dual stack; default: the underlay interface's IPv6 address)",
         _optional(public_ipv6), NODE, metavar="IP"),
    Flag("iface", "underlay interface, by name or IPv4 address; repeatable, tried in order (default: the "
         "interface holding --public-ip, else the interface of the default route)", iface, NODE, default=(),
         kind="list", metavar="NAME|IP"),
    Flag("iface-regex", "regular expression matching the underlay interface's name or address; repeatable, "
         "tried after --iface", regex, NODE, default=(), kind="list", metavar="REGEX"),
    Flag("iface-can-reach", "pick the underlay interface the kernel would use to reach this address",
         _optional(any_ip), NODE, metavar="IP"),
    Flag("underlay-mtu", f"underlay MTU ({MIN_UNDERLAY_MTU}..{MAX_MTU}); wins over the config's Backend.MTU "
         "and the kernel (offline default 1500)",
         int_range(MIN_UNDERLAY_MTU, MAX_MTU, "the underlay MTU (the overlay loses 50 to VXLAN)"), NODE,
         status="ours", metavar="N"),
    Flag("netns", "read and write the kernel inside this network namespace (must exist)",
         _optional(netns_name), NODE, status="ours", metavar="NAME"),
    Flag("netlink-backend", "batched (default: raw rtnetlink in batches, Cython-accelerated encoding and "
         "dumps when built) or pyroute2 (the reference)", choice("batched", "pyroute2"), NODE, default="batched",
         status="ours", metavar="batched|pyroute2"),
    Flag("bridge", "name of the pod bridge the agent creates and owns (default cni0)", _optional(ifname), NODE,
         status="ours", metavar="NAME"),
    Flag("no-bridge", "manage no pod bridge (the CNI plugin, or Docker --bip, owns it)", go_bool, NODE,
         default=False, status="ours", kind="bool"),
    Flag("route-layout", "onlink (flanneld's: one onlink gateway route per peer, the default) or nexthop "
         "(routes through nexthop objects: linear to install past 10,000 nodes)", choice("onlink", "nexthop"),
         NODE, default="onlink", status="ours", metavar="onlink|nexthop"),
    Flag("ip-masq", "masquerade pod traffic leaving the network (flanneld's FLANNEL-POSTRTG chain); recorded in "
         "subnet.env as FLANNEL_IPMASQ for the CNI plugin",
         go_bool, NODE, default=False, kind="bool"),
    Flag("ip-masq-fully-random-disable", "do not use fully-random port mapping in the MASQUERADE rules",
         go_bool, NODE, default=False, kind="bool"),
    Flag("iptables-forward-rules", "add ACCEPT rules for the overlay network to the FORWARD chain",
         go_bool, NODE, default=True, kind="bool"),
    Flag("ip-blackhole-route", "add a blackhole route for this node's own subnet(s), so traffic to their unused "
         "addresses is dropped instead of following the default route (docs/flags.md)",
         go_bool, NODE, default=False, kind="bool"),
    Flag("iptables-resync", "seconds between checks of the iptables rules",
         int_range(1, int(MAX_SECONDS), "the iptables resync period"), NODE, default=5,
         metavar="SECONDS"),
    # offline comparison and output
    Flag("live-file", "compare against this live-state JSON instead of the kernel", readable_file,
         frozenset({"plan", "show"}), status="ours", group=_OUT, metavar="FILE"),
    Flag("offline", "compare against an empty kernel (no netlink access): what a new node would get",
         go_bool, frozenset({"plan"}), default=False, status="ours", kind="bool", group=_OUT),
    Flag("config", "what-if: plan every node of the cluster as if the network config in etcd were this JSON "
         "file (nothing is read from a node or written)", readable_file, frozenset({"plan"}), status="ours",
         group=_OUT, metavar="FILE"),
    Flag("segment", "with --config: an L2 segment of the underlay (CIDR); peers on a node's segment are routed "
         "directly under DirectRouting; repeatable", any_cidr, frozenset({"plan"}), default=(), status="ours",
         kind="list", group=_OUT, metavar="CIDR"),
    Flag("expiry-window", "audit: warn about leases with less than this many seconds to live",
         int_range(0, int(MAX_SECONDS), "the expiry window"), frozenset({"audit"}), default=1800,
         status="ours", group=_OUT, metavar="SECONDS"),
    Flag("show-all", "list every change of a large plan (by default more than 100 changes are summed up: "
         "counts per kind and the first lines)", go_bool, frozenset({"plan", "apply"}), default=False,
         status="ours", kind="bool", group=_OUT),
    Flag("output", "output format: text or json", choice("text", "json"),
         frozenset({"plan", "apply", "show", "audit", "explain"}),
         default="text", status="ours", group=_OUT, metavar="text|json"),
    Flag("output-file", "write the snapshot here instead of standard output", writable_path,
         frozenset({"snapshot"}), status="ours", group=_OUT, metavar="FILE", short="-o"),
    # the agent
    Flag("subnet-file", "where subnet.env is written (flanneld's format)", writable_path, RUN,
         default="/run/flannel/subnet.env", group=_AGENT, metavar="FILE"),
    Flag("resync-interval", f"seconds between full resyncs, jittered by 10%% (at least {MIN_RESYNC_SECONDS:g})",
         seconds(MIN_RESYNC_SECONDS), RUN, default=30.0, status="ours", group=_AGENT, metavar="SECONDS"),
    Flag("healthz-ip", "address the /healthz and /readyz server listens on", any_ip, RUN, default="0.0.0.0",
         group=_AGENT, metavar="IP"),
    Flag("healthz-port", "serve /healthz and /readyz on this port (0: off)",
         int_range(0, 65535, "a TCP port"), RUN, default=0, group=_AGENT, metavar="PORT"),
    Flag("metrics-port", "serve Prometheus /metrics on this port, on --healthz-ip (0: off)",
         int_range(0, 65535, "a TCP port"), RUN, default=0, status="ours", group=_AGENT, metavar="PORT"),
    Flag("subnet-lease-renew-margin", "renew our lease at least this many minutes before it would expire "
         "(1..1439, as flanneld)",
         int_range(1, 24 * 60 - 1, "the lease renewal margin (minutes, less than the 24 h lease)"), RUN,
         default=60, group=_AGENT, metavar="MINUTES"),
    Flag("log-level", "debug, info, warning or error (without it, -v decides); debug also prints the "
         "traceback of an internal error",
         choice("debug", "info", "warning", "error"), AGENT, default="info", status="ours", group=_AGENT,
         metavar="LEVEL"),
    Flag("v", "klog verbosity, as flanneld's -v=N: 0 logs at info, 1 and more at debug (--log-level wins)",
         klog_level, AGENT, group=_AGENT, metavar="N"),
    Flag("vmodule", "klog per-file verbosity: accepted for flanneld's command lines, changes nothing here",
         _text, AGENT, status="ignored", group=_AGENT, metavar="PATTERN=N,..."),
    Flag("log_backtrace_at", "klog backtrace location: accepted for flanneld's command lines, changes nothing here",
         _text, AGENT, status="ignored", group=_AGENT, metavar="FILE:LINE"),
)

_KUBE = "kube subnet manager mode is not implemented; this agent reads leases from etcd only"

UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("kube-subnet-mgr", _KUBE, "false", "bool"),
    Unsupported("kube-api-url", _KUBE),
    Unsupported("kube-annotation-prefix", _KUBE, "flannel.alpha.coreos.com"),
    Unsupported("kubeconfig-file", _KUBE),
    Unsupported("net-config-path", _KUBE + " (the network config is read from etcd)",
                "/etc/kube-flannel/net-conf.json"),
    Unsupported("set-node-network-unavailable", _KUBE, "true", "bool"),
)

_BY_NAME: dict[str, Flag] = {f.name: f for f in FLAGS}
_UNSUPPORTED: dict[str, Unsupported] = {u.name: u for u in UNSUPPORTED}


def flags_for(command: str) -> tuple[Flag, ...]:
    return tuple(f for f in FLAGS if command in f.commands)


class UsageError(ReconcilerError):
    """argparse's complaint (unknown option, missing value), as one line."""


#: The subcommands (an argv that opens with a flag and names one of them put the flags first).
COMMAND_NAMES = frozenset({"plan", "apply", "show", "run", "snapshot", "explain", "audit", "demo", "bench"})


def parser_argv(argv: Sequence[str], *, flanneld: bool = False) -> list[str]:
    """The argv argparse is given: Go's forms rewritten, ``run`` put first for a
    flanneld command line, and ``["--version"]`` alone when ``--version`` is
    asked for (before any ``--``).  Raises ``UsageError`` or ``FlagError``.

    A flanneld command line has no subcommand: with ``flanneld`` (the
    ``flanneld`` entry point), or when argv opens with one of our flags, it
    means ``run``.  Kept apart from the parser so that ``--version`` can be
    recognised without importing what the commands need.
    """
    argv = list(argv)
    if not flanneld and starts_with_flag(argv):
        named = [a for a in argv if a in COMMAND_NAMES]
        if named:
            raise UsageError(f"options go after the command: flannel-reconciler {named[0]} "
                             f"{' '.join(a for a in argv if a != named[0])}")
    if flanneld or starts_with_flag(argv):
        argv = ["run", *argv]
    converted = go_style_argv(argv)
    head = converted[:converted.index("--")] if "--" in converted else converted
    if "--version" in head:
        converted = ["--version"]        # flanneld's -version wins over everything else on the line
    return converted


def starts_with_flag(argv: Sequence[str]) -> bool:
    """Does argv open with a flag of the table (or a refused flanneld one)?  Then
    it is a flanneld command line, which has no subcommand: it means ``run``."""
    if not argv or not argv[0].startswith("-") or argv[0] == "-":
        return False
    name = argv[0].lstrip("-").partition("=")[0]
    return name in _BY_NAME or name in _UNSUPPORTED


def suggest(command: str, token: str) -> str:
    """Why ``token`` (an argument argparse did not take for ``command``) is wrong, in a few words."""
    import difflib

    if not token.startswith("-") or token == "-":
        return f"{token!r} is not an option (the commands take no positional arguments)"
    name = token.lstrip("-").partition("=")[0]
    dashes = "--" if token.startswith("--") else "-"
    flag = _BY_NAME.get(name)
    if flag is not None:
        return f"{dashes}{name} is not an option of {command} (it is one of {', '.join(sorted(flag.commands))})"
    mine = [f.name for f in flags_for(command)]
    close = difflib.get_close_matches(name.replace("_", "-").lower(), mine, n=1, cutoff=0.75)
    if close:
        return f"unknown flag {dashes}{name}: did you mean --{close[0]}?"
    return f"unknown flag {dashes}{name}"


# --------------------------------------------------------------------------
# Go-style argv

def go_style_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite Go's flag forms into argparse's, and refuse flanneld's unsupported flags.

    ``-name=value``, ``-name value``, ``--name value`` of a known flag become
    ``--name=value`` (so that a value starting with "-" stays a value, as in
    Go); a boolean ``-name``/``--name`` becomes ``--name=true`` and never
    takes the next word, as in Go.  Short options (``-h``, ``-o``) and
    everything after ``--`` are left as they are.  Raises ``FlagError``.
    """
    out: list[str] = []
    i = 0
    n = len(argv)
    while i < n:
        tok = argv[i]
        i += 1
        if tok == "--":
            out.extend(argv[i - 1:])
            break
        if not tok.startswith("-") or tok == "-":
            out.append(tok)
            continue
        body = tok[2:] if tok.startswith("--") else tok[1:]
        name, eq, value = body.partition("=")
        if name == "help":
            out.append("--help")
            continue
        if name == "version":
            # flanneld's -version is a boolean: -version=false asks for nothing.
            try:
                wanted = go_bool(value) if eq else True
            except ValueError as exc:
                raise FlagError(f"-version={value!r}: {exc}") from None
            if wanted:
                out.append("--version")
            continue
        if name in _UNSUPPORTED:
            u = _UNSUPPORTED[name]
            if not eq:
                if u.kind == "bool":
                    value = "true"
                elif i < n:
                    value, i = argv[i], i + 1
                else:
                    raise FlagError(f"flag needs an argument: -{name}")
            if not u.harmless(value):
                raise FlagError(u.refusal())
            continue
        flag = _BY_NAME.get(name)
        if flag is None:
            out.append(tok)
            continue
        if not eq:
            if flag.kind == "bool":
                if i < n and argv[i] in GO_TRUE + GO_FALSE:
                    # Go's rule, and argparse would only say "unrecognized arguments: false".
                    raise FlagError(f"{tok} {argv[i]}: a boolean flag never takes the next word; "
                                    f"write {tok}={argv[i]}")
                value = "true"
            elif i < n:
                value, i = argv[i], i + 1
            else:
                out.append("--" + name)  # argparse says "expected one argument"
                continue
        out.append(f"--{name}={value}")
    return out


# --------------------------------------------------------------------------
# Values: command line, then FLANNELD_*, then the default

def _parse_one(flag: Flag, text: str, source: str) -> Any:
    try:
        return flag.parse(text)
    except ValueError as exc:
        raise FlagError(f"{source}: {exc}") from None


#: Flags that cannot both be set: (first, second, why).  A boolean counts as
#: set when it is true; anything else when it is given at all (command line
#: or a non-empty variable), since each pair names two answers to one question.
CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("leases-file", "etcd-endpoints", "both name where the leases come from; give one"),
    ("offline", "live-file", "both name the live state to compare against; give one"),
    ("no-bridge", "bridge", "one says no pod bridge, the other names it; give one"),
)


def _given(flag: Flag, raw: Mapping[str, Any], environ: Mapping[str, str], values: Mapping[str, Any]) -> str | None:
    """How ``flag`` was set (``--name`` or ``FLANNELD_NAME``), or None when it was not."""
    if flag.kind == "bool" and not values.get(flag.dest):
        return None
    if raw.get(flag.dest) is not None:
        return "--" + flag.name
    if environ.get(flag.env, ""):
        return flag.env
    return None


def check_conflicts(command: str, raw: Mapping[str, Any], environ: Mapping[str, str],
                    values: Mapping[str, Any]) -> None:
    for a, b, why in CONFLICTS:
        fa, fb = _BY_NAME[a], _BY_NAME[b]
        if command not in fa.commands or command not in fb.commands:
            continue
        ga, gb = _given(fa, raw, environ, values), _given(fb, raw, environ, values)
        if ga and gb:
            raise FlagError(f"{ga} and {gb} contradict each other: {why}")


def ignored_notes(command: str, values: Mapping[str, Any]) -> list[str]:
    """One note per "ignored" flag that was given, so that nothing is dropped unsaid."""
    return [f"-{f.name} is accepted for flanneld's command lines and changes nothing here: {f.help.split(':')[0]}"
            for f in flags_for(command) if f.status == "ignored" and values.get(f.dest)]


def resolve(command: str, raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The checked value of every flag of ``command``.

    ``raw`` holds what argparse collected: a string (a list for repeatable
    flags), or None when the flag was not given.  Raises ``FlagError`` naming
    the flag or the variable and the bad value.
    """
    for u in UNSUPPORTED:
        text = environ.get(u.env, "")
        if text and not u.harmless(text):
            raise FlagError(f"{u.env}={text!r}: {u.refusal()}")
    values: dict[str, Any] = {}
    for flag in flags_for(command):
        given = raw.get(flag.dest)
        text = environ.get(flag.env, "")
        if flag.kind == "list":
            if given:
                values[flag.dest] = tuple(_parse_one(flag, t, f"--{flag.name} {t!r}") for t in given)
            elif text:
                # Go appends the variable's value as one more item, commas and all.
                values[flag.dest] = (_parse_one(flag, text, f"{flag.env}={text!r}"),)
            else:
                values[flag.dest] = tuple(flag.default)
        elif given is not None:
            values[flag.dest] = _parse_one(flag, given, f"--{flag.name} {given!r}")
        elif text:
            values[flag.dest] = _parse_one(flag, text, f"{flag.env}={text!r}")
        else:
            values[flag.dest] = flag.default
    check_conflicts(command, raw, environ, values)
    # --log-level (or its variable) wins; else -v decides, as in flanneld.
    if (values.get("v") is not None and raw.get("log_level") is None
            and not environ.get(_BY_NAME["log-level"].env, "")):
        values["log_level"] = log_level_of(values["v"])
    return values


def add_to_parser(parser, command: str) -> None:
    """Define ``command``'s flags on an argparse (sub)parser, grouped, with help text.

    argparse only collects text; ``resolve`` checks it, so that ``--help``
    works whatever the environment holds.
    """
    groups: dict[str, Any] = {}
    for flag in flags_for(command):
        g = groups.get(flag.group)
        if g is None:
            g = groups[flag.group] = parser.add_argument_group(flag.group)
        names = ([flag.short] if flag.short else []) + ["--" + flag.name]
        default = flag.default
        if isinstance(default, tuple):
            default = ",".join(default) if default else None
        if isinstance(default, bool):
            default = str(default).lower()
        extra = f"; default {default}" if default not in (None, "") else ""
        help_text = f"{flag.help} (env {flag.env}{extra})"
        if flag.kind == "bool":
            g.add_argument(*names, dest=flag.dest, nargs="?", const="true", default=None,
                           metavar="true|false", help=help_text)
        elif flag.kind == "list":
            g.add_argument(*names, dest=flag.dest, action="append", default=None, metavar=flag.metavar,
                           help=help_text)
        else:
            g.add_argument(*names, dest=flag.dest, default=None, metavar=flag.metavar, help=help_text)
