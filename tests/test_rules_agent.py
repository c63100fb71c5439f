"""The agent's rule step (``Agent.rule_sync``) with a fake rule reconciler: what it asks, logs and counts."""
from __future__ import annotations

import logging

from reconciler.agent.daemon import Agent, AgentOptions
from reconciler.core.plan import OpResult
from reconciler.rules import LiveRules, RuleFlags, ToolError, desired_rules, make_rule_plan
from tests.fixtures import config, host1, lease, mac1, subnet1


class FakeRules:
    """Plans against an empty kernel; ``fail`` makes reading (or applying) fail."""

    def __init__(self, fail_read: str | None = None, fail_apply: str | None = None):
        self.fail_read, self.fail_apply = fail_read, fail_apply
        self.flags: list[RuleFlags] = []
        self.applied = 0
        self.live = LiveRules()

    def startup_warnings(self, config):
        return ["/proc/sys/net/bridge/bridge-nf-call-iptables is missing: run 'modprobe br_netfilter'"]

    def forward_warning(self, config):
        return None

    def desired(self, config, own, flags):
        self.flags.append(flags)
        return desired_rules(config, own, flags)

    def plan(self, desired):
        if self.fail_read:
            raise ToolError(self.fail_read)
        return make_rule_plan(desired, self.live)

    def apply(self, plan):
        self.applied += 1
        if self.fail_apply:
            return [OpResult(c, False, None, f"{c.obj.describe()}: {self.fail_apply}") for c in plan]
        self.live = LiveRules(iptables={"": ()})  # not converging on purpose: every check writes again
        return [OpResult(c, True) for c in plan]


def agent(rules, **opts) -> Agent:
    a = Agent(None, None, AgentOptions(**opts), rules=rules)
    a.config = config()
    return a


def test_flags_reach_the_rules_and_changes_are_counted_and_logged(caplog):
    rules = FakeRules()
    a = agent(rules, ip_masq=True, forward_rules=False, masq_fully_random_disable=True)
    with caplog.at_level(logging.INFO, logger="flannel_reconciler"):
        a.rule_sync.sync(a.config, lease(subnet1, host1, mac1))
    assert rules.flags == [RuleFlags(forward_rules=False, ip_masq=True, masq_fully_random_disable=True)]
    assert rules.applied == 1
    assert "modprobe br_netfilter" in caplog.text
    assert "rules create=8 update=0 delete=0 failed=0" in caplog.text
    assert "rules: + rule iptables -t nat -A POSTROUTING" in caplog.text
    assert a.metrics.get("flannel_reconciler_operations_total", kind="rule", op="create", result="ok") == 8


def test_a_missing_tool_is_logged_once_and_nothing_is_applied(caplog):
    rules = FakeRules(fail_read="iptables is not installed (Debian package iptables)")
    a = agent(rules)
    with caplog.at_level(logging.INFO, logger="flannel_reconciler"):
        for _ in range(3):
            a.rule_sync.sync(a.config, lease(subnet1, host1, mac1))
    assert caplog.text.count("rules: iptables is not installed") == 1
    assert caplog.text.count("modprobe br_netfilter") == 1     # start-up warning: once
    assert rules.applied == 0


def test_failed_changes_are_errors_naming_the_rule_and_never_raise(caplog):
    rules = FakeRules(fail_apply="iptables-nft-restore --noflush -w failed: boom")
    a = agent(rules)
    with caplog.at_level(logging.INFO, logger="flannel_reconciler"):
        a.rule_sync.sync(a.config, lease(subnet1, host1, mac1))
    assert "failed: rule iptables -t filter chain FLANNEL-FWD: iptables-nft-restore --noflush -w failed: boom" \
        in caplog.text
    assert "failed=4" in caplog.text


def test_no_rule_reconciler_or_no_lease_yet_does_nothing():
    a = agent(None)
    a.rule_sync.sync(a.config, lease(subnet1, host1, mac1))     # rules not managed: a no-op
    rules = FakeRules()
    b = agent(rules)
    b.rule_sync.sync(b.config, None)                #  before the first cycle: no lease to build rules from
    assert rules.flags == []
