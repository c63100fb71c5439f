"""The rule plan: what differs between desired and owned live rules.  Pure.

The unit of writing is one of our chains (iptables) or one of our tables
(nftables): when anything in it differs it is rewritten whole, in order, in
one atomic transaction (``iptables-restore --noflush``, ``nft -f``), the way
flanneld re-creates its set when a rule is missing.  A chain or table that
already matches is not written at all.

The changes listed for people (``+``/``-``/``~`` per rule, in the kind
``rule``) are the difference rule by rule: missing rules, stale rules, and
rules in the wrong place (``position desired 2, live 5``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from typing import Any, Literal, Sequence

from reconciler.rules.model import IptChain, IptRule, NftChain, NftRuleRef, NftTable, RuleSet

__all__ = ["LiveRules", "RuleChange", "RulePlan", "IptWrite", "NftWrite", "jump_ops", "make_rule_plan"]

Op = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class LiveRules:
    """What we own in the kernel now, per interface.

    ``iptables`` maps an iptables backend (``nft``, ``legacy``) to our
    chains found there; ``xt`` is the backend this host uses (where desired
    chains are written; our chains in the other one are removed).
    ``referenced`` holds (xt, family, table, chain) of our chains that a
    rule we do not own jumps to: they are emptied, never deleted.
    """

    xt: str = ""
    iptables: dict[str, tuple[IptChain, ...]] = field(default_factory=dict)
    nftables: tuple[NftTable, ...] = ()
    referenced: frozenset = frozenset()


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One rule-level change, shaped like ``plan.Change`` (``op``, ``obj``, ``live``, ``kind``)."""

    op: Op
    obj: Any
    live: Any = None
    detail: tuple[tuple[str, Any, Any], ...] = ()
    group: tuple = ()

    @property
    def kind(self) -> str:
        return "rule"

    def changed(self) -> dict[str, tuple[Any, Any]]:
        return {name: (want, have) for name, want, have in self.detail}


@dataclass(frozen=True, slots=True)
class IptWrite:
    """One chain to write in one iptables backend: ``desired`` None removes it."""

    xt: str
    desired: IptChain | None
    live: IptChain | None
    rewrite_rules: bool          # the chain's own rules differ: flush and append them all
    referenced: bool = False     # a foreign rule jumps here: flush, never -X

    @property
    def group(self) -> tuple:
        c = self.desired or self.live
        return ("iptables", self.xt, c.family)


@dataclass(frozen=True, slots=True)
class NftWrite:
    """One of our nftables tables to replace (``desired`` None deletes it)."""

    desired: NftTable | None
    live: NftTable | None

    @property
    def group(self) -> tuple:
        return ("nftables",)


@dataclass(frozen=True, slots=True)
class RulePlan:
    changes: tuple[RuleChange, ...] = ()
    ipt_writes: tuple[IptWrite, ...] = ()
    nft_writes: tuple[NftWrite, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.changes

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self):
        return iter(self.changes)

    def summary(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "delete": 0}
        for c in self.changes:
            out[c.op] += 1
        return out


def _seq_changes(want: Sequence[Any], have: Sequence[Any], key, group: tuple) -> list[RuleChange]:
    """Rule-level difference of two ordered lists (multisets: duplicates count)."""
    wk = [key(x) for x in want]
    hk = [key(x) for x in have]
    sm = SequenceMatcher(None, hk, wk, autojunk=False)
    matched_h: set[int] = set()
    matched_w: set[int] = set()
    for blk in sm.get_matching_blocks():
        matched_h.update(range(blk.a, blk.a + blk.size))
        matched_w.update(range(blk.b, blk.b + blk.size))
    spare: dict[Any, list[int]] = {}
    for i, k in enumerate(hk):
        if i not in matched_h:
            spare.setdefault(k, []).append(i)
    out: list[RuleChange] = []
    for j, k in enumerate(wk):
        if j in matched_w:
            continue
        if spare.get(k):
            i = spare[k].pop(0)
            out.append(RuleChange("update", want[j], have[i], (("position", j + 1, i + 1),), group))
        else:
            out.append(RuleChange("create", want[j], None, (), group))
    for idxs in spare.values():
        for i in idxs:
            out.append(RuleChange("delete", have[i], None, (), group))
    return out


def _bind(chain: IptChain, xt: str) -> IptChain:
    return replace(chain, xt=xt, jumps=tuple(replace(r, xt=xt) for r in chain.jumps),
                   rules=tuple(replace(r, xt=xt) for r in chain.rules))


def jump_ops(want: IptChain | None, have: IptChain | None) -> tuple[list[IptRule], list[IptRule]]:
    """(live jump rules to delete, desired jump rules to append): one jump stays, extras go."""
    need = Counter(r.spec for r in (want.jumps if want else ()))
    deletes: list[IptRule] = []
    for r in (have.jumps if have else ()):
        if need[r.spec] > 0:
            need[r.spec] -= 1
        else:
            deletes.append(r)
    adds: list[IptRule] = []
    for r in (want.jumps if want else ()):
        if need[r.spec] > 0:
            need[r.spec] -= 1
            adds.append(r)
    return deletes, adds


def _jump_changes(want: IptChain | None, have: IptChain | None, group) -> list[RuleChange]:
    deletes, adds = jump_ops(want, have)
    changes = [RuleChange("delete", r, None, (), group) for r in deletes]
    return changes + [RuleChange("create", r, None, (), group) for r in adds]


def _ipt_plan(desired: RuleSet, live: LiveRules) -> tuple[list[RuleChange], list[IptWrite]]:
    changes: list[RuleChange] = []
    writes: list[IptWrite] = []
    backends = dict(live.iptables)
    backends.setdefault(live.xt, ())
    for xt in sorted(backends, key=lambda b: (b != live.xt, b)):
        want_chains = {c.key: _bind(c, xt) for c in desired.iptables} if xt == live.xt else {}
        have_chains = {c.key: c for c in backends[xt]}
        for key in list(want_chains) + [k for k in have_chains if k not in want_chains]:
            want, have = want_chains.get(key), have_chains.get(key)
            group = ("iptables", xt, key[0])
            chain_changes: list[RuleChange] = []
            if have is None:
                chain_changes.append(RuleChange("create", want, None, (), group))
                chain_changes += [RuleChange("create", r, None, (), group) for r in want.rules]
                rewrite = True
            elif want is None:
                chain_changes += [RuleChange("delete", r, None, (), group) for r in have.rules]
                rewrite = bool(have.rules)
            else:
                chain_changes += _seq_changes(want.rules, have.rules, lambda r: r.spec, group)
                rewrite = bool(chain_changes)
            jump_changes = _jump_changes(want, have, group)
            referenced = (xt, key[0], key[1], key[2]) in live.referenced
            if want is None and not referenced:
                chain_changes.append(RuleChange("delete", have, None, (), group))
            # Read as they happen: stale jumps go first, new jumps come last.
            changes += [c for c in jump_changes if c.op == "delete"] + chain_changes
            changes += [c for c in jump_changes if c.op == "create"]
            if rewrite or jump_changes or (want is None and not referenced):
                writes.append(IptWrite(xt, want, have, rewrite, referenced))
    return changes, writes


def _nft_chain_changes(table: NftTable, want: NftChain | None, have: NftChain | None, group) -> list[RuleChange]:
    name = (want or have).name

    def ref(chain: NftChain, rule: str | None = None) -> NftRuleRef:
        return NftRuleRef(table.family, table.name, name, rule, chain.declaration())

    out: list[RuleChange] = []
    if have is None:
        out.append(RuleChange("create", ref(want), None, (), group))
        out += [RuleChange("create", ref(want, r), None, (), group) for r in want.rules]
    elif want is None:
        out += [RuleChange("delete", ref(have, r), None, (), group) for r in have.rules]
        out.append(RuleChange("delete", ref(have), None, (), group))
    else:
        if want.declaration() != have.declaration():
            out.append(RuleChange("update", ref(want), ref(have),
                                  (("declaration", want.declaration(), have.declaration()),), group))
        out += _seq_changes([ref(want, r) for r in want.rules], [ref(have, r) for r in have.rules],
                            lambda x: x.rule, group)
    return out


def _nft_plan(desired: RuleSet, live: LiveRules) -> tuple[list[RuleChange], list[NftWrite]]:
    changes: list[RuleChange] = []
    writes: list[NftWrite] = []
    want_tables = {t.key: t for t in desired.nftables}
    have_tables = {t.key: t for t in live.nftables}
    group = ("nftables",)
    for key in list(want_tables) + [k for k in have_tables if k not in want_tables]:
        want, have = want_tables.get(key), have_tables.get(key)
        table_changes: list[RuleChange] = []
        if have is None:
            table_changes.append(RuleChange("create", want, None, (), group))
        names = [c.name for c in (want.chains if want else ())]
        names += [c.name for c in (have.chains if have else ()) if c.name not in names]
        for n in names:
            table_changes += _nft_chain_changes(want or have, want.chain(n) if want else None,
                                                have.chain(n) if have else None, group)
        if want is None:
            table_changes.append(RuleChange("delete", have, None, (), group))
        if table_changes:
            changes += table_changes
            writes.append(NftWrite(want, have))
    return changes, writes


def make_rule_plan(desired: RuleSet, live: LiveRules) -> RulePlan:
    """The rule changes turning ``live`` (owned rules only) into ``desired``; empty when they match."""
    ipt_changes, ipt_writes = _ipt_plan(desired, live)
    nft_changes, nft_writes = _nft_plan(desired, live)
    return RulePlan(tuple(ipt_changes + nft_changes), tuple(ipt_writes), tuple(nft_writes))
