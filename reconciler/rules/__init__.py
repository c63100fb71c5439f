"""Packet filter rules, declaratively: flanneld's FORWARD accepts and masquerade chain.

A separate pipeline beside the netlink one, with the same shape:

    (config, our lease, flags) --desired_rules--> RuleSet
    iptables-save / nft -j list --parse (ours only)--> LiveRules
    (desired, live) --make_rule_plan--> RulePlan (kind "rule") --RuleReconciler.apply--> results

See docs/traffic-rules.md for the rules, their order and the facts relied on.
"""
import typing as _typing

from reconciler.core.lazy import lazy_getattr as _lazy_getattr

if _typing.TYPE_CHECKING:  # for the type checker; at run time each name loads on first use
    from reconciler.rules.desired import desired_rules
    from reconciler.rules.iptables import IptablesBackend, ToolError, parse_save, restore_input
    from reconciler.rules.model import IptChain, IptRule, NftChain, NftTable, RuleFlags, RuleSet
    from reconciler.rules.nftables import NftablesBackend, nft_script, parse_tables
    from reconciler.rules.plan import LiveRules, RuleChange, RulePlan, make_rule_plan
    from reconciler.rules.reconciler import RuleReconciler, br_netfilter_warnings, forward_drop_warning


__all__ = [
    "IptChain",
    "IptRule",
    "IptablesBackend",
    "LiveRules",
    "NftChain",
    "NftTable",
    "NftablesBackend",
    "RuleChange",
    "RuleFlags",
    "RulePlan",
    "RuleReconciler",
    "RuleSet",
    "ToolError",
    "br_netfilter_warnings",
    "desired_rules",
    "forward_drop_warning",
    "make_rule_plan",
    "nft_script",
    "parse_save",
    "parse_tables",
    "restore_input",
]

#: Each public name and the module it comes from.  Loaded on first use, so that a
#: command that only plans rules (``plan --offline``) does not import the tools' modules.
_SOURCES = {
    "IptChain": "reconciler.rules.model",
    "IptRule": "reconciler.rules.model",
    "IptablesBackend": "reconciler.rules.iptables",
    "LiveRules": "reconciler.rules.plan",
    "NftChain": "reconciler.rules.model",
    "NftTable": "reconciler.rules.model",
    "NftablesBackend": "reconciler.rules.nftables",
    "RuleChange": "reconciler.rules.plan",
    "RuleFlags": "reconciler.rules.model",
    "RulePlan": "reconciler.rules.plan",
    "RuleReconciler": "reconciler.rules.reconciler",
    "RuleSet": "reconciler.rules.model",
    "ToolError": "reconciler.rules.iptables",
    "br_netfilter_warnings": "reconciler.rules.reconciler",
    "desired_rules": "reconciler.rules.desired",
    "forward_drop_warning": "reconciler.rules.reconciler",
    "make_rule_plan": "reconciler.rules.plan",
    "nft_script": "reconciler.rules.nftables",
    "parse_save": "reconciler.rules.iptables",
    "parse_tables": "reconciler.rules.nftables",
    "restore_input": "reconciler.rules.iptables",
}


__getattr__ = _lazy_getattr(__name__, globals(), _SOURCES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
