"""The rules pipeline without a kernel: flanneld's exact rules, parsing, the plan, the tools' input.

The expected rules are spelled out as flanneld writes them
(pkg/trafficmngr/iptables ``forwardRules``/``masqRules``, nftables
``addMasqRules``), in iptables-save words, not computed.
"""
from __future__ import annotations

import subprocess
from dataclasses import replace
from ipaddress import IPv6Network

import pytest

from reconciler.rules import (IptablesBackend, LiveRules, NftablesBackend, RuleFlags, RuleReconciler, ToolError,
                              br_netfilter_warnings, desired_rules, forward_drop_warning, make_rule_plan,
                              nft_script, parse_save, parse_tables, restore_input)
from reconciler.rules.nftables import expr_text
from tests.fixtures import config, host1, lease, mac1, subnet1

V4_FORWARD = [
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    '-A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    '-A FLANNEL-FWD -d 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
]
V4_MASQ = [
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 100.64.1.0/24 -d 100.64.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 100.64.0.0/16 -d 100.64.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG ! -s 100.64.0.0/16 -d 100.64.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 100.64.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
    '-j MASQUERADE --random-fully',
    '-A FLANNEL-POSTRTG ! -s 100.64.0.0/16 -d 100.64.0.0/16 -m comment --comment "flanneld masq" '
    '-j MASQUERADE --random-fully',
]


def own():
    return lease(subnet1, host1, mac1)


def lines(ruleset, family="ipv4"):
    out = []
    for c in ruleset.iptables:
        if c.family == family:
            out += [r.save_line() for r in c.jumps] + [r.save_line() for r in c.rules]
    return out


def test_default_flags_give_flanneld_forward_rules_only():
    rs = desired_rules(config(), own(), RuleFlags())
    assert rs.mode == "iptables" and rs.nftables == ()
    assert lines(rs) == V4_FORWARD
    assert [(c.table, c.name) for c in rs.iptables] == [("filter", "FLANNEL-FWD")]


def test_ip_masq_adds_flanneld_postrouting_chain_in_order():
    rs = desired_rules(config(), own(), RuleFlags(ip_masq=True))
    assert lines(rs) == V4_FORWARD + V4_MASQ
    assert [(c.table, c.name) for c in rs.iptables] == [("filter", "FLANNEL-FWD"), ("nat", "FLANNEL-POSTRTG")]


def test_random_fully_off_when_disabled_or_unsupported():
    plain = [line.replace(" --random-fully", "") for line in V4_MASQ]
    for kw in ({"random_fully": False}, {}):
        flags = RuleFlags(forward_rules=False, ip_masq=True, masq_fully_random_disable=not kw)
        assert lines(desired_rules(config(), own(), flags, **kw)) == plain


def test_no_flags_no_rules():
    rs = desired_rules(config(), own(), RuleFlags(forward_rules=False))
    assert rs.iptables == () and len(rs) == 0


def test_ipv6_twins_use_ff00_multicast():
    cfg = config(enable_ipv6=True, ipv6_network=IPv6Network("fd00:64::/56"), ipv6_subnet_len=64)
    mine = replace(own(), ipv6_subnet=IPv6Network("fd00:64:0:1::/64"))
    rs = desired_rules(cfg, mine, RuleFlags(ip_masq=True))
    v6 = lines(rs, "ipv6")
    assert v6[1] == '-A FLANNEL-FWD -s fd00:64::/56 -m comment --comment "flanneld forward" -j ACCEPT'
    assert ('-A FLANNEL-POSTRTG -s fd00:64::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" '
            '-j MASQUERADE --random-fully') in v6
    assert '-A FLANNEL-POSTRTG -s fd00:64:0:1::/64 -d fd00:64::/56 -m comment --comment "flanneld masq" -j RETURN' in v6
    assert [c.tool for c in rs.iptables if c.family == "ipv6"] == ["ip6tables", "ip6tables"]


def test_nftables_mode_gives_flanneld_tables():
    rs = desired_rules(config(enable_nftables=True), own(), RuleFlags(ip_masq=True))
    assert rs.mode == "nftables" and rs.iptables == ()
    (t,) = rs.nftables
    assert (t.family, t.name) == ("ip", "flannel-ipv4")
    fwd, post = t.chains
    assert (fwd.type, fwd.hook, fwd.priority_name) == ("filter", "forward", "filter")
    assert fwd.rules == ("ip saddr 100.64.0.0/16 accept", "ip daddr 100.64.0.0/16 accept")
    assert (post.type, post.hook, post.priority_name) == ("nat", "postrouting", "srcnat")
    assert post.rules == (
        "meta mark 0x00004000 return",
        "ip saddr 100.64.1.0/24 ip daddr 100.64.0.0/16 return",
        "ip saddr 100.64.0.0/16 ip daddr 100.64.1.0/24 return",
        "ip saddr != 100.64.1.0/24 ip daddr 100.64.0.0/16 return",
        "ip saddr 100.64.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 100.64.0.0/16 ip daddr 100.64.0.0/16 masquerade fully-random",
    )


# --- reading iptables-save ----------------------------------------------------------------------

FLANNELD_LEFTOVERS = """# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -d 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -s 100.64.9.0/24 -d 100.64.0.0/16 -m comment --comment "flanneld masq" -j RETURN
COMMIT
"""


def test_parse_save_keeps_ours_and_notes_foreign_references():
    chains, refs, policies = parse_save(FLANNELD_LEFTOVERS, "ipv4", "nft")
    by = {c.name: c for c in chains}
    assert set(by) == {"FLANNEL-FWD", "FLANNEL-POSTRTG"}
    assert len(by["FLANNEL-FWD"].jumps) == 2 and len(by["FLANNEL-FWD"].rules) == 2
    assert by["FLANNEL-POSTRTG"].jumps == ()   # only a foreign chain jumps there
    assert refs == {("nft", "ipv4", "nat", "FLANNEL-POSTRTG")}
    assert policies[("filter", "FORWARD")] == "DROP"


def test_plan_corrects_flanneld_leftovers_and_leaves_the_rest():
    chains, refs, _ = parse_save(FLANNELD_LEFTOVERS, "ipv4", "nft")
    live = LiveRules(xt="nft", iptables={"nft": chains}, referenced=refs)
    desired = desired_rules(config(), own(), RuleFlags())     # masquerade off now
    plan = make_rule_plan(desired, live)
    text = [f"{c.op} {c.obj.describe()} {c.changed()}" for c in plan]
    assert text == [
        'delete rule iptables-nft -t filter -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD {}',
        'update rule iptables-nft -t filter -A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward"'
        " -j ACCEPT {'position': (1, 2)}",
        'delete rule iptables-nft -t nat -A FLANNEL-POSTRTG -s 100.64.9.0/24 -d 100.64.0.0/16 -m comment '
        '--comment "flanneld masq" -j RETURN {}',
    ]
    # The referenced chain is emptied, never deleted; foreign rules are never named.
    assert restore_input([w for w in plan.ipt_writes if w.group[2] == "ipv4"]) == "\n".join([
        "*filter",
        ":FLANNEL-FWD - [0:0]",
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        '-A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        "COMMIT",
        "*nat",
        ":FLANNEL-POSTRTG - [0:0]",
        "COMMIT",
    ]) + "\n"


def test_converged_plan_is_empty_and_offline_plan_creates_everything():
    desired = desired_rules(config(), own(), RuleFlags(ip_masq=True))
    text = "*filter\n:FLANNEL-FWD - [0:0]\n" + "\n".join(V4_FORWARD) + "\nCOMMIT\n*nat\n:FLANNEL-POSTRTG - [0:0]\n" \
        + "\n".join(V4_MASQ) + "\nCOMMIT\n"
    chains, refs, _ = parse_save(text, "ipv4", "legacy")
    assert make_rule_plan(desired, LiveRules(xt="legacy", iptables={"legacy": chains})).in_sync
    offline = make_rule_plan(desired, LiveRules())
    assert offline.summary() == {"create": 12, "update": 0, "delete": 0}
    assert offline.changes[0].obj.describe() == "rule iptables -t filter chain FLANNEL-FWD"


def test_switching_to_nftables_removes_our_iptables_chains_from_both_backends():
    chains, refs, _ = parse_save(FLANNELD_LEFTOVERS, "ipv4", "nft")
    legacy, _, _ = parse_save("*filter\n:FLANNEL-FWD - [0:0]\n" + V4_FORWARD[1] + "\nCOMMIT\n", "ipv4", "legacy")
    live = LiveRules(xt="nft", iptables={"nft": chains, "legacy": legacy}, referenced=refs)
    plan = make_rule_plan(desired_rules(config(enable_nftables=True), own(), RuleFlags()), live)
    assert {w.xt for w in plan.ipt_writes} == {"nft", "legacy"}
    assert all(w.desired is None for w in plan.ipt_writes)
    assert len(plan.nft_writes) == 1 and plan.nft_writes[0].live is None
    script = nft_script(plan.nft_writes)
    assert script.startswith("add table ip flannel-ipv4\ndelete table ip flannel-ipv4\ntable ip flannel-ipv4 {")
    legacy_input = restore_input([w for w in plan.ipt_writes if w.xt == "legacy"])
    assert legacy_input == "*filter\n:FLANNEL-FWD - [0:0]\n-X FLANNEL-FWD\nCOMMIT\n"


# --- reading nft -j ---------------------------------------------------------------------------------

NFT_JSON = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 1}},
    {"table": {"family": "inet", "name": "firewall", "handle": 2}},
    {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "postrtg", "handle": 2, "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "firewall", "name": "fwd", "handle": 1, "type": "filter",
               "hook": "forward", "prio": 0, "policy": "drop"}},
    {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 5, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 16384}}, {"return": None}]}},
    {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 6, "expr": [
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "100.64.1.0", "len": 24}}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"prefix": {"addr": "100.64.0.0", "len": 16}}}},
        {"counter": {"packets": 3, "bytes": 180}},
        {"masquerade": {"flags": "fully-random"}}]}},
    {"rule": {"family": "inet", "table": "firewall", "chain": "fwd", "handle": 7, "expr": [{"accept": None}]}},
]}


def test_nft_json_reads_back_as_nft_words_and_foreign_tables_are_ignored():
    (t,) = parse_tables(NFT_JSON)
    assert (t.family, t.name) == ("ip", "flannel-ipv4")
    (c,) = t.chains
    assert c.declaration() == "type nat hook postrouting priority srcnat; policy accept;"
    assert c.rules == ("meta mark 0x00004000 return",
                       "ip saddr != 100.64.1.0/24 ip daddr 100.64.0.0/16 counter masquerade fully-random")
    assert expr_text([{"snat": {"addr": "1.2.3.4"}}]) == '{"snat": {"addr": "1.2.3.4"}}'


def test_nft_plan_lists_rule_differences_and_replaces_only_differing_tables():
    desired = desired_rules(config(enable_nftables=True), own(), RuleFlags(ip_masq=True))
    live = LiveRules(nftables=parse_tables(NFT_JSON))
    plan = make_rule_plan(desired, live)
    ops = [(c.op, c.obj.describe()) for c in plan]
    assert ("create", "rule nft chain ip flannel-ipv4 forward { type filter hook forward priority filter; "
                      "policy accept; }") in ops
    assert ("delete", "rule nft rule ip flannel-ipv4 postrtg ip saddr != 100.64.1.0/24 ip daddr 100.64.0.0/16 "
                      "counter masquerade fully-random") in ops
    assert len(plan.nft_writes) == 1
    assert make_rule_plan(desired, LiveRules(nftables=desired.nftables)).in_sync


# --- shell pieces with a fake runner ------------------------------------------------------------

class FakeTools:
    """Answers like the tools would; records every argv (and never runs anything)."""

    def __init__(self, outputs):
        self.outputs, self.calls = outputs, []

    def __call__(self, argv, stdin):
        self.calls.append((tuple(argv), stdin))
        rc, out = self.outputs.get(tuple(argv), (0, ""))
        return subprocess.CompletedProcess(list(argv), rc, out, "boom" if rc else "")


def test_detection_prefers_kubelet_hint_then_rule_count(monkeypatch):
    monkeypatch.setattr(IptablesBackend, "available", lambda self, xt: True)
    hint = FakeTools({("iptables-legacy-save",): (0, "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n")})
    assert IptablesBackend(runner=hint).detect() == "legacy"
    # Never "-t mangle" against legacy: naming a table creates it.
    assert not any(a[0].startswith("iptables-legacy") and "-t" in a for a, _ in hint.calls)
    more = FakeTools({("iptables-legacy-save",): (0, "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")})
    assert IptablesBackend(runner=more).detect() == "legacy"
    assert IptablesBackend(runner=FakeTools({})).detect() == "nft"


def test_apply_reports_a_failed_transaction_on_each_of_its_changes(monkeypatch):
    monkeypatch.setattr(IptablesBackend, "available", lambda self, xt: xt == "nft")
    tools = FakeTools({("iptables-nft-restore", "--noflush", "-w"): (1, "")})
    rr = RuleReconciler(IptablesBackend(runner=tools, xt="nft"), NftablesBackend(runner=tools))
    plan = rr.plan(desired_rules(config(), own(), RuleFlags()))
    results = rr.apply(plan)
    assert len(results) == 4 and not any(r.ok for r in results)
    assert "iptables-nft-restore --noflush -w failed" in results[0].message
    restore = [stdin for argv, stdin in tools.calls if argv[0] == "iptables-nft-restore"]
    assert restore and '-A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT' in restore[0]


def test_br_netfilter_warns_in_iptables_mode_only():
    missing = {"/proc/sys/net/bridge/bridge-nf-call-iptables": None}
    (w,) = br_netfilter_warnings(config(), missing)
    assert "modprobe br_netfilter" in w
    assert br_netfilter_warnings(config(enable_nftables=True), missing) == []
    assert br_netfilter_warnings(config(), {"/proc/sys/net/bridge/bridge-nf-call-iptables": "1\n"}) == []
    assert "is 0" in br_netfilter_warnings(config(), {"/proc/sys/net/bridge/bridge-nf-call-iptables": "0\n"})[0]


def test_forward_drop_is_flagged_in_nftables_mode():
    policies = {("ipv4", "filter", "FORWARD"): "DROP"}
    assert "cannot override" in forward_drop_warning(config(enable_nftables=True), policies)
    assert forward_drop_warning(config(), policies) is None


# --- property: the plan names only what is ours, and one apply converges ------------------------

import os  # noqa: E402
import shlex  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class RestoreModel:
    """``iptables-restore --noflush`` semantics over {table: {chain: [rule line]}}: declaring a
    chain creates or flushes it, ``-A`` appends, ``-D`` removes the first equal rule, ``-X`` deletes."""

    BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}

    def __init__(self):
        self.tables = {t: {c: [] for c in cs} for t, cs in self.BUILTIN.items()}

    def restore(self, text):
        table = None
        for line in text.splitlines():
            if line.startswith("*"):
                table = self.tables[line[1:]]
            elif line.startswith(":"):
                table[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                _, chain, rest = line.split(" ", 2)
                table[chain].append(rest)
            elif line.startswith("-D "):
                _, chain, rest = line.split(" ", 2)
                table[chain].remove(rest)
            elif line.startswith("-X "):
                assert not any(r.endswith(f"-j {line[3:]}") for rules in table.values() for r in rules)
                del table[line[3:]]

    def save(self):
        out = []
        for t, chains in self.tables.items():
            out.append(f"*{t}")
            out += [f":{c} {'ACCEPT' if c in self.BUILTIN[t] else '-'} [0:0]" for c in chains]
            out += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def foreign(self):
        return {(t, c): [r for r in rules if "FLANNEL-" not in r]
                for t, chains in self.tables.items() for c, rules in chains.items() if not c.startswith("FLANNEL-")}


_ours_pool = [line.split(" ", 2) for line in V4_FORWARD + V4_MASQ] + [
    ["-A", "FLANNEL-POSTRTG", '-s 100.64.7.0/24 -d 100.64.0.0/16 -m comment --comment "flanneld masq" -j RETURN'],
    ["-A", "FLANNEL-FWD", "-s 10.0.0.0/8 -j ACCEPT"]]
_foreign_pool = [("filter", "FORWARD", "-s 198.18.0.0/24 -j DROP"), ("filter", "FOREIGN", "-d 198.18.5.0/24 -j ACCEPT"),
                 ("filter", "FORWARD", "-j FOREIGN"), ("nat", "POSTROUTING", "-o eth0 -j MASQUERADE"),
                 ("nat", "KUBE-POSTROUTING", "-j FLANNEL-POSTRTG"), ("filter", "INPUT", "-i lo -j ACCEPT")]


@settings(max_examples=max(200, int(os.environ.get("PROPERTY_EXAMPLES", "200"))), deadline=None)
@given(ours=st.lists(st.sampled_from(_ours_pool), max_size=12), foreign=st.lists(st.sampled_from(_foreign_pool),
       max_size=8), flags=st.builds(RuleFlags, st.booleans(), st.booleans(), st.booleans()),
       nft=st.booleans())
def test_plan_touches_only_ours_and_one_apply_converges(ours, foreign, flags, nft):
    kernel = RestoreModel()
    for name, table in (("FLANNEL-FWD", "filter"), ("FLANNEL-POSTRTG", "nat"), ("FOREIGN", "filter"),
                        ("KUBE-POSTROUTING", "nat")):
        kernel.tables[table][name] = []
    for _, chain, rest in ours:
        kernel.tables["filter" if chain in ("FORWARD", "FLANNEL-FWD") else "nat"][chain].append(rest)
    for table, chain, rest in foreign:
        kernel.tables[table][chain].append(rest)
    before = kernel.foreign()
    desired = desired_rules(config(enable_nftables=nft), own(), flags)

    nft_tables: tuple = ()

    def live():
        chains, refs, _ = parse_save(kernel.save(), "ipv4", "nft")
        return LiveRules(xt="nft", iptables={"nft": chains}, referenced=refs, nftables=nft_tables)

    plan = make_rule_plan(desired, live())
    # nft -f replaces each written table whole (checked against the kernel in test_rules_kernel.py).
    nft_tables = tuple(w.desired for w in plan.nft_writes if w.desired is not None)
    text = restore_input(plan.ipt_writes)
    for line in text.splitlines():
        words = shlex.split(line)
        assert (line.startswith(("*", "COMMIT")) or words[0].startswith(":FLANNEL-")
                or words[1].startswith("FLANNEL-") or words[-1] in ("FLANNEL-FWD", "FLANNEL-POSTRTG")), line
    kernel.restore(text)
    assert kernel.foreign() == before
    assert make_rule_plan(desired, live()).in_sync


def test_rules_package_surface_and_a_pure_core():
    import types

    import reconciler.rules as rules
    from reconciler.rules import desired, model, plan

    for name in rules.__all__:       # the names load on first use: each one resolves
        getattr(rules, name)
    public = sorted(n for n, v in vars(rules).items() if not n.startswith("_") and not isinstance(v, types.ModuleType))
    assert rules.__all__ == public
    for mod in (desired, model, plan):   # the pure half runs no tool
        assert "subprocess" not in vars(mod) and "shutil" not in vars(mod)


def test_an_unreadable_unused_backend_does_not_stop_the_rules(monkeypatch):
    monkeypatch.setattr(IptablesBackend, "available", lambda self, xt: True)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/sbin/" + name)
    tools = FakeTools({("iptables-legacy-save",): (1, ""), ("ip6tables-legacy-save",): (1, "")})
    rr = RuleReconciler(IptablesBackend(runner=tools, xt="nft"), NftablesBackend(runner=tools))
    plan = rr.plan(desired_rules(config(), own(), RuleFlags()))
    assert plan.summary() == {"create": 4, "update": 0, "delete": 0}
    tools = FakeTools({("iptables-nft-save", "-t", "filter"): (1, "")})
    rr = RuleReconciler(IptablesBackend(runner=tools, xt="nft"), NftablesBackend(runner=tools))
    with pytest.raises(ToolError, match="iptables-nft-save -t filter failed"):
        rr.plan(desired_rules(config(), own(), RuleFlags()))
