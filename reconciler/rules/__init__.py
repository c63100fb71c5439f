"""Packet filter rules, declaratively: flanneld's FORWARD accepts and masquerade chain.

A separate pipeline beside the netlink one, with the same shape:

    (config, our lease, flags) --desired_rules--> RuleSet
    iptables-save / nft -j list --parse (ours only)--> LiveRules
    (desired, live) --make_rule_plan--> RulePlan (kind "rule") --RuleReconciler.apply--> results

See docs/traffic-rules.md for the rules, their order and the facts relied on.
"""
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
