"""Packet filter rules as frozen values: flanneld's chains in iptables, its tables in nftables.

Two vocabularies, one per kernel interface, each in the words its own tool
prints, so that a rule read back from the kernel and a desired rule compare
as plain strings:

* **iptables**: a rule is its ``iptables-save`` line without ``-A CHAIN``
  (``-s 100.64.0.0/10 -m comment --comment "flanneld forward" -j ACCEPT``);
  ``iptables-save`` prints exactly what ``iptables-restore`` was given for
  every rule flanneld writes, on both the legacy and nf_tables backends
  (docs/traffic-rules.md, "Round trip").
* **nftables**: a rule is its ``nft list`` text (``ip saddr 100.64.0.0/10
  accept``), rebuilt from ``nft -j`` for reading.

Ownership lives in the shapes: an ``IptChain`` is one of *our* chains
(``FLANNEL-FWD``, ``FLANNEL-POSTRTG``) with the rules inside it and the
rules of the built-in chain that jump into it; an ``NftTable`` is one of our
tables (``flannel-ipv4``, ``flannel-ipv6``), all of whose content is ours.
Nothing else is ever represented, so nothing else can be planned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

__all__ = [
    "FWD_CHAIN",
    "MASQ_CHAIN",
    "NFT_TABLES",
    "OUR_CHAINS",
    "IptChain",
    "IptRule",
    "NftChain",
    "NftTable",
    "RuleFlags",
    "RuleSet",
    "quote_spec",
]

Family = Literal["ipv4", "ipv6"]

#: flanneld's chain names (pkg/trafficmngr/iptables), and the built-in chain
#: and table each hangs off.
FWD_CHAIN = "FLANNEL-FWD"
MASQ_CHAIN = "FLANNEL-POSTRTG"
OUR_CHAINS: dict[str, tuple[str, str]] = {FWD_CHAIN: ("filter", "FORWARD"), MASQ_CHAIN: ("nat", "POSTROUTING")}
#: flanneld's nftables tables (pkg/trafficmngr/nftables), per family.
NFT_TABLES: dict[Family, tuple[str, str]] = {"ipv4": ("ip", "flannel-ipv4"), "ipv6": ("ip6", "flannel-ipv6")}


@dataclass(frozen=True, slots=True)
class RuleFlags:
    """flanneld's traffic flags, with its names and defaults."""

    forward_rules: bool = True              # --iptables-forward-rules
    ip_masq: bool = False                   # --ip-masq
    masq_fully_random_disable: bool = False  # --ip-masq-fully-random-disable


def _quote(token: str) -> str:
    if token and not any(c in token for c in ' "\\\'\t'):
        return token
    # iptables-save's quoting (libxtables ``xtables_save_string``): double quotes, with
    # backslash before '"' and '\\', which iptables-restore undoes.  A jump rule read
    # back from the kernel is written again (``-D``) only in this form.
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_spec(spec: tuple[str, ...]) -> str:
    """A rule spec in ``iptables-save`` spelling: arguments with blanks or quotes are double-quoted."""
    return " ".join(_quote(t) for t in spec)


@dataclass(frozen=True, slots=True)
class IptRule:
    """One iptables rule: ``-A <chain> <spec>`` in ``<table>`` of ``iptables`` or ``ip6tables``.

    ``xt`` names the iptables backend the rule lives in (``nft``, ``legacy``)
    once it is bound to a host; ``""`` when unknown (an offline plan).  It is
    rendering only: identity is (family, table, chain, spec).
    """

    family: Family
    table: str
    chain: str
    spec: tuple[str, ...]
    xt: str = field(default="", compare=False)

    KIND: ClassVar[str] = "rule"

    @property
    def key(self) -> tuple[str, str, str, tuple[str, ...]]:
        return (self.family, self.table, self.chain, self.spec)

    @property
    def tool(self) -> str:
        base = "iptables" if self.family == "ipv4" else "ip6tables"
        return f"{base}-{self.xt}" if self.xt else base

    @property
    def target(self) -> str | None:
        """The ``-j`` target (the jump rule's target is one of our chains)."""
        for i, tok in enumerate(self.spec[:-1]):
            if tok in ("-j", "--jump"):
                return self.spec[i + 1]
        return None

    def save_line(self, op: str = "-A") -> str:
        return f"{op} {self.chain} {quote_spec(self.spec)}"

    def describe(self) -> str:
        return f"rule {self.tool} -t {self.table} {self.save_line()}"

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.tool, "table": self.table, "chain": self.chain, "rule": quote_spec(self.spec)}


@dataclass(frozen=True, slots=True)
class IptChain:
    """One of our iptables chains: its rules in order, and the rules jumping into it.

    Desired: exactly one jump rule, appended to the built-in chain as
    flanneld does.  Live: every rule of the built-in chain whose target is
    this chain (flanneld's restarts can leave several).
    """

    family: Family
    table: str
    name: str
    jumps: tuple[IptRule, ...]
    rules: tuple[IptRule, ...]
    xt: str = field(default="", compare=False)

    KIND: ClassVar[str] = "rule"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.family, self.table, self.name)

    @property
    def tool(self) -> str:
        base = "iptables" if self.family == "ipv4" else "ip6tables"
        return f"{base}-{self.xt}" if self.xt else base

    def describe(self) -> str:
        return f"rule {self.tool} -t {self.table} chain {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.tool, "table": self.table, "chain": self.name}


@dataclass(frozen=True, slots=True)
class NftChain:
    """A base chain of one of our nftables tables, with its rules as ``nft list`` prints them."""

    name: str
    type: str
    hook: str
    priority: int
    rules: tuple[str, ...]
    policy: str = "accept"

    @property
    def priority_name(self) -> str:
        # nft's names for the standard priorities flanneld uses.
        return {0: "filter", 100: "srcnat"}.get(self.priority, str(self.priority))

    def declaration(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority_name}; policy {self.policy};"


@dataclass(frozen=True, slots=True)
class NftTable:
    """One of our nftables tables (``ip flannel-ipv4``, ``ip6 flannel-ipv6``): all of it is ours."""

    family: str       # nft family: ip, ip6
    name: str
    chains: tuple[NftChain, ...]

    KIND: ClassVar[str] = "rule"

    @property
    def key(self) -> tuple[str, str]:
        return (self.family, self.name)

    def chain(self, name: str) -> NftChain | None:
        for c in self.chains:
            if c.name == name:
                return c
        return None

    def describe(self) -> str:
        return f"rule nft table {self.family} {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"backend": "nft", "table": f"{self.family} {self.name}"}


@dataclass(frozen=True, slots=True)
class NftRuleRef:
    """One rule (or chain header) inside one of our nft tables, for plans and rendering."""

    family: str
    table: str
    chain: str
    rule: str | None = None          # None: the chain itself
    declaration: str = ""

    KIND: ClassVar[str] = "rule"

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        return (self.family, self.table, self.chain, self.rule)

    def describe(self) -> str:
        if self.rule is None:
            return f"rule nft chain {self.family} {self.table} {self.chain} {{ {self.declaration} }}"
        return f"rule nft rule {self.family} {self.table} {self.chain} {self.rule}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": "nft", "table": f"{self.family} {self.table}", "chain": self.chain}
        if self.rule is not None:
            out["rule"] = self.rule
        return out


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule we want (desired) or own (live) for one node.

    ``mode`` is ``iptables`` or ``nftables`` (the config's ``EnableNFTables``);
    the other mode's part is empty in a desired set, which is how switching
    modes removes our rules from the mode no longer used.
    """

    mode: Literal["iptables", "nftables"]
    iptables: tuple[IptChain, ...] = ()
    nftables: tuple[NftTable, ...] = ()

    def __len__(self) -> int:
        return (sum(len(c.rules) + len(c.jumps) for c in self.iptables)
                + sum(len(ch.rules) for t in self.nftables for ch in t.chains))
