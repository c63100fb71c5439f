"""The rules in the command line: flanneld's flags, and the rule part of ``plan``/``apply``/``show``.

``plan --offline``/``--live-file`` have no rules section in their input, so
their rules are planned against "none present" (what a new node would
get, assuming ``--random-fully`` support); against a real kernel the tools
are run, and when they are missing the rules are skipped with a note.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from reconciler.core.errors import ReconcilerError
from reconciler.rules.model import RuleFlags, RuleSet
from reconciler.rules.plan import LiveRules, RulePlan, make_rule_plan
from reconciler.rules.desired import desired_rules

__all__ = ["add_rule_args", "go_bool", "rule_flags", "cli_rule_plan", "rule_show_rows"]

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def go_bool(text: str) -> bool:
    """A boolean flag value as Go's ``strconv.ParseBool`` (flanneld's flag package) reads it."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r} (use true or false)")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get("FLANNELD_" + name)
    if raw is None or raw == "":
        return default
    try:
        return go_bool(raw)
    except argparse.ArgumentTypeError:
        return default


def add_rule_args(p: argparse.ArgumentParser, *, ip_masq: bool = True, resync: bool = False) -> None:
    """flanneld's traffic flags (names and defaults as flanneld's), also read from ``FLANNELD_*``."""
    g = p.add_argument_group("packet filter rules (flanneld's FLANNEL-FWD / FLANNEL-POSTRTG)")
    if ip_masq:
        g.add_argument("--ip-masq", type=go_bool, nargs="?", const=True, metavar="BOOL", default=_env_bool("IP_MASQ", False),
                       help="masquerade traffic leaving the overlay network (FLANNEL-POSTRTG), and say so in "
                            "subnet.env (FLANNEL_IPMASQ) so the CNI plugin leaves masquerading to us (default false)")
    g.add_argument("--iptables-forward-rules", type=go_bool, nargs="?", const=True, metavar="BOOL",
                   default=_env_bool("IPTABLES_FORWARD_RULES", True),
                   help="accept forwarded traffic to and from the network (default true; =false to disable)")
    g.add_argument("--ip-masq-fully-random-disable", type=go_bool, nargs="?", const=True, metavar="BOOL",
                   default=_env_bool("IP_MASQ_FULLY_RANDOM_DISABLE", False),
                   help="masquerade without --random-fully (default false)")
    if resync:
        raw = os.environ.get("FLANNELD_IPTABLES_RESYNC", "5")
        g.add_argument("--iptables-resync", type=int, default=int(raw) if raw.isdigit() else 5,
                       help="seconds between rule checks, besides every reconcile cycle (default 5)")


def rule_flags(args: Any) -> RuleFlags:
    return RuleFlags(forward_rules=bool(getattr(args, "iptables_forward_rules", True)),
                     ip_masq=bool(getattr(args, "ip_masq", False)),
                     masq_fully_random_disable=bool(getattr(args, "ip_masq_fully_random_disable", False)))


def cli_rule_plan(args: Any, cycle: Any, kernel: bool):
    """``(desired, plan, reconciler or None, note or None)`` for one CLI run.

    ``kernel`` False (``--offline``, ``--live-file``): planned against no
    rules at all.  True: read with the tools in ``--netns``; when they are
    missing the rules are skipped and ``note`` says why.
    """
    flags = rule_flags(args)
    if not kernel:
        desired = desired_rules(cycle.config, cycle.own, flags)
        return desired, make_rule_plan(desired, LiveRules()), None, None
    from reconciler.rules.iptables import IptablesBackend
    from reconciler.rules.nftables import NftablesBackend
    from reconciler.rules.reconciler import RuleReconciler

    rr = RuleReconciler(IptablesBackend(args.netns), NftablesBackend(args.netns))
    try:
        desired = rr.desired(cycle.config, cycle.own, flags)
        plan = rr.plan(desired)
    except ReconcilerError as exc:
        return RuleSet("iptables"), RulePlan(), None, f"rules skipped: {exc}"
    return desired, plan, rr, None


def rule_show_rows(desired: RuleSet, plan: RulePlan, xt: str = "") -> list[tuple[str, str, str]]:
    """``(status, object, detail)`` per desired rule and per stale one, like ``render.show_rows``.

    ``xt``: the iptables backend the rules live in, for their names (``iptables-nft``).
    """
    touched: dict[Any, Any] = {}
    for c in plan:
        if c.op != "delete":
            touched[c.obj.key] = c
    rows: list[tuple[str, str, str]] = []
    for obj in _desired_objects(desired, plan, xt):
        c = touched.get(obj.key)
        if c is None:
            rows.append(("ok", obj.describe(), ""))
        elif c.op == "create":
            rows.append(("missing", obj.describe(), ""))
        else:
            detail = ", ".join(f"{a} desired {d}, live {l}" for a, (d, l) in c.changed().items())
            rows.append(("drift", obj.describe(), detail))
    for c in plan:
        if c.op == "delete":
            rows.append(("stale", c.obj.describe(), ""))
    return rows


def _desired_objects(desired: RuleSet, plan: RulePlan, xt: str):
    """Every desired rule object, bound to the host's iptables backend."""
    from dataclasses import replace

    from reconciler.rules.model import NftRuleRef

    for chain in desired.iptables:
        yield replace(chain, xt=xt)
        for r in chain.rules + chain.jumps:
            yield replace(r, xt=xt)
    for t in desired.nftables:
        yield t
        for ch in t.chains:
            yield NftRuleRef(t.family, t.name, ch.name, None, ch.declaration())
            for r in ch.rules:
                yield NftRuleRef(t.family, t.name, ch.name, r, ch.declaration())
