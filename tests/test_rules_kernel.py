"""The rules against the real kernel, in fresh namespaces, for each interface.

Modes: iptables on the nf_tables backend, iptables on the legacy backend
(where the host has ``iptables-legacy``), and nftables.  The oracle is the
tools' own listing (``iptables-<backend>-save``, ``nft list``), never our
parser.  Nothing is sent anywhere: only rule tables are touched, inside
namespaces this run creates and deletes.
"""
from __future__ import annotations

import json
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.rules import IptablesBackend, NftablesBackend, RuleFlags, RuleReconciler
from tests.conftest_netns import require_root
from tests.fixtures import config, host1, lease, mac1, subnet1
from tests.netns import netns, run
from tests.test_rules import V4_FORWARD, V4_MASQ

pytestmark = [pytest.mark.root]

MODES = [
    "iptables-nft",
    pytest.param("iptables-legacy", marks=pytest.mark.skipif(
        shutil.which("iptables-legacy") is None, reason="this host has no iptables-legacy")),
    "nftables",
]

# flanneld's rules in iptables-save words, as test_rules spells them out from flannel's source.
FWD, MASQ = V4_FORWARD, V4_MASQ
NFT_TABLE = """table ip flannel-ipv4 {
	comment "rules for flannel-ipv4"
	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 100.64.0.0/16 accept
		ip daddr 100.64.0.0/16 accept
	}

	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x00004000 return
		ip saddr 100.64.1.0/24 ip daddr 100.64.0.0/16 return
		ip saddr 100.64.0.0/16 ip daddr 100.64.1.0/24 return
		ip saddr != 100.64.1.0/24 ip daddr 100.64.0.0/16 return
		ip saddr 100.64.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
		ip saddr != 100.64.0.0/16 ip daddr 100.64.0.0/16 masquerade fully-random
	}
}
"""


def xt_of(mode: str) -> str:
    return mode.split("-")[1] if mode.startswith("iptables") else "nft"


def reconciler(ns: str, mode: str) -> RuleReconciler:
    return RuleReconciler(IptablesBackend(ns, xt=xt_of(mode)), NftablesBackend(ns))


def cfg(mode: str):
    return config(enable_nftables=mode == "nftables")


def own():
    return lease(subnet1, host1, mac1)


def converge(rr: RuleReconciler, mode: str, flags: RuleFlags):
    plan = rr.plan(rr.desired(cfg(mode), own(), flags))
    results = rr.apply(plan)
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    return plan


def save(ns: str, xt: str) -> list[str]:
    """``iptables-<xt>-save`` of filter then nat: rule and chain lines, counters and comments dropped."""
    out = run(ns, f"iptables-{xt}-save", "-t", "filter").stdout + run(ns, f"iptables-{xt}-save", "-t", "nat").stdout
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if line and not line.startswith("#")]


def ours(lines: list[str]) -> list[str]:
    return [line for line in lines if "FLANNEL-" in line and not line.startswith(":")]


def nft_table(ns: str) -> str:
    proc = run(ns, "nft", "list", "table", "ip", "flannel-ipv4", check=False)
    return proc.stdout if proc.returncode == 0 else ""


@pytest.mark.parametrize("mode", MODES)
def test_apply_writes_flanneld_rules_exactly_then_plans_nothing(netns, mode):
    rr = reconciler(netns, mode)
    plan = converge(rr, mode, RuleFlags(ip_masq=True))
    assert plan.summary()["create"] > 0
    if mode == "nftables":
        assert nft_table(netns) == NFT_TABLE
    else:
        assert ours(save(netns, xt_of(mode))) == FWD + MASQ
    assert rr.plan(rr.desired(cfg(mode), own(), RuleFlags(ip_masq=True))).in_sync


@pytest.mark.parametrize("mode", MODES)
def test_rule_deleted_by_hand_is_planned_and_repaired(netns, mode):
    rr = reconciler(netns, mode)
    converge(rr, mode, RuleFlags(ip_masq=True))
    if mode == "nftables":
        run(netns, "nft", "flush", "chain", "ip", "flannel-ipv4", "forward")
    else:
        run(netns, f"iptables-{xt_of(mode)}", "-t", "nat", "-D", "FLANNEL-POSTRTG", "-m", "mark", "--mark",
            "0x4000/0x4000", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN")
    plan = rr.plan(rr.desired(cfg(mode), own(), RuleFlags(ip_masq=True)))
    assert [c.op for c in plan] == (["create", "create"] if mode == "nftables" else ["create"])
    converge(rr, mode, RuleFlags(ip_masq=True))
    if mode == "nftables":
        assert nft_table(netns) == NFT_TABLE
    else:
        assert ours(save(netns, xt_of(mode))) == FWD + MASQ


@pytest.mark.parametrize("mode", [m for m in MODES if m != "nftables"])
def test_flanneld_leftovers_are_corrected(netns, mode):
    """Another subnet's masquerade rules in the wrong order, and the jump rule twice."""
    xt = xt_of(mode)
    stale = MASQ[:1] * 2 + [MASQ[3].replace("100.64.1.0", "100.64.7.0"), MASQ[2], MASQ[1]]
    run(netns, f"iptables-{xt}-restore", "--noflush", input="*nat\n:FLANNEL-POSTRTG - [0:0]\n"
        + "\n".join(stale) + "\nCOMMIT\n")
    plan = converge(reconciler(netns, mode), mode, RuleFlags(forward_rules=False, ip_masq=True))
    assert {c.op for c in plan} == {"create", "update", "delete"}
    assert ours(save(netns, xt)) == MASQ


@pytest.mark.parametrize("mode", [m for m in MODES if m != "nftables"])
def test_switching_modes_moves_our_rules_and_only_ours(netns, mode):
    xt = xt_of(mode)
    run(netns, f"iptables-{xt}", "-A", "FORWARD", "-s", "198.18.0.0/15", "-j", "ACCEPT")
    run(netns, "nft", "add", "table", "inet", "fw")
    rr = reconciler(netns, mode)
    converge(rr, mode, RuleFlags(ip_masq=True))
    converge(rr, "nftables", RuleFlags(ip_masq=True))
    assert nft_table(netns) == NFT_TABLE
    assert [line for line in save(netns, xt) if "FLANNEL" in line] == []
    assert "-A FORWARD -s 198.18.0.0/15 -j ACCEPT" in save(netns, xt)
    converge(rr, mode, RuleFlags(ip_masq=True))
    assert nft_table(netns) == "" and ours(save(netns, xt)) == FWD + MASQ
    assert run(netns, "nft", "list", "table", "inet", "fw", check=False).returncode == 0


def test_detection_follows_the_backend_holding_the_rules(netns):
    if shutil.which("iptables-legacy") is None:
        pytest.skip("this host has no iptables-legacy")
    assert IptablesBackend(netns).detect() == "nft"          # nothing anywhere: nft, like the wrapper
    run(netns, "iptables-legacy", "-A", "INPUT", "-s", "198.19.255.0/24", "-j", "DROP")
    assert IptablesBackend(netns).detect() == "legacy"
    run(netns, "iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    assert IptablesBackend(netns).detect() == "nft"          # kubelet's hint wins over counting


# --- property: foreign rules and chains in the same tables are never touched ---------------------

_addr = st.sampled_from(["198.18.0.0/24", "198.18.5.0/24", "100.64.9.0/24", "100.64.0.0/16", "198.19.0.7/32"])
_filter_rule = st.tuples(st.sampled_from(["FORWARD", "INPUT", "OUTPUT", "FOREIGN-A"]),
                         st.sampled_from(["-s", "-d", "! -s"]), _addr,
                         st.sampled_from(["ACCEPT", "DROP", "RETURN", "FOREIGN-B"]))
_nat_rule = st.tuples(st.sampled_from(["POSTROUTING", "PREROUTING", "FOREIGN-N"]),
                      st.sampled_from(["-s", "-d"]), _addr, st.sampled_from(["MASQUERADE", "RETURN", "ACCEPT"]))


@st.composite
def situations(draw):
    filt = draw(st.lists(_filter_rule, max_size=6))
    nat = draw(st.lists(_nat_rule, max_size=4))
    # Our chains as some earlier run left them: a random subset, shuffled, jumps 0..2 times.
    fwd = draw(st.lists(st.sampled_from(FWD[1:]), max_size=3))
    masq = draw(st.lists(st.sampled_from(MASQ[1:] + [MASQ[2].replace("100.64.1.0", "100.64.3.0")]), max_size=5))
    jumps = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    flags = draw(st.builds(RuleFlags, st.booleans(), st.booleans(), st.booleans()))
    return filt, nat, fwd, masq, jumps, flags


def _seed_iptables(filt, nat, fwd, masq, jumps) -> str:
    def rule(chain, match, addr, target):
        if target == "MASQUERADE" and chain != "POSTROUTING":
            target = "ACCEPT"
        if target in ("RETURN",) and chain in ("FORWARD", "INPUT", "OUTPUT", "POSTROUTING", "PREROUTING"):
            target = "ACCEPT"
        return f"-A {chain} {match} {addr} -j {target}"

    f = ["*filter", ":FOREIGN-A - [0:0]", ":FOREIGN-B - [0:0]", ":FLANNEL-FWD - [0:0]"]
    f += [rule(*r) for r in filt] + fwd + FWD[:1] * jumps[0]
    n = ["*nat", ":FOREIGN-N - [0:0]", ":FLANNEL-POSTRTG - [0:0]"] + [rule(*r) for r in nat] + masq
    n += MASQ[:1] * jumps[1]
    return "\n".join(f + ["COMMIT"] + n + ["COMMIT"]) + "\n"


def _foreign_view(lines: list[str]) -> list[str]:
    return [line for line in lines if "FLANNEL-" not in line]


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(situation=situations())
def test_foreign_rules_survive_and_a_second_plan_is_empty(mode, situation):
    require_root()
    filt, nat, fwd, masq, jumps, flags = situation
    xt = xt_of(mode)
    with netns("rules") as ns:
        run(ns, f"iptables-{xt}-restore", "--noflush", input=_seed_iptables(filt, nat, fwd, masq, jumps))
        if mode == "nftables":
            run(ns, "nft", "-f", "-", input="table inet fw {\n chain fw_forward { type filter hook forward priority 0; "
                "ip saddr 198.18.0.0/24 accept; }\n chain fw_mine { ip daddr 100.64.0.0/16 drop; }\n}\n"
                "table ip flannel-ipv4 {\n chain forward { type filter hook forward priority filter; "
                "ip saddr 100.64.77.0/24 accept; }\n}\n")
        before_ipt = _foreign_view(save(ns, xt))
        before_nft = run(ns, "nft", "list", "table", "inet", "fw", check=False).stdout
        rr = reconciler(ns, mode)
        converge(rr, mode, flags)
        assert _foreign_view(save(ns, xt)) == before_ipt
        assert run(ns, "nft", "list", "table", "inet", "fw", check=False).stdout == before_nft
        assert rr.plan(rr.desired(cfg(mode), own(), flags)).in_sync
        expected = []
        if mode != "nftables":
            expected = (FWD if flags.forward_rules else []) + [
                line.replace(" --random-fully", "") if flags.masq_fully_random_disable else line
                for line in (MASQ if flags.ip_masq else [])]
        assert ours(save(ns, xt)) == expected


# --- the command line against a namespace -------------------------------------------------------

def test_cli_plan_apply_show_list_and_repair_rules(underlay_factory, tmp_path, capsys, monkeypatch):
    from tests.test_kernel_e2e import THREE, cli, node_args, write_snapshot

    node = underlay_factory(1).nodes[0]
    leases = write_snapshot(tmp_path / "leases.json", THREE)
    args = [*node_args(leases, node.ns), "--ip-masq"]
    rc, out, err = cli(capsys, "apply", *args)
    assert rc == 0, out + err
    # A fresh namespace holds no rules anywhere: the nf_tables backend, as iptables-wrapper picks.
    assert out.count("  + rule iptables-nft ") == 12 and out.endswith("22 created, 0 updated, 0 deleted; 0 failed.\n")
    rc, out, err = cli(capsys, "plan", *args)
    assert (rc, out.splitlines()[-1]) == (0, "In sync: no changes."), out + err

    xt = IptablesBackend(node.ns).detect()
    run(node.ns, f"iptables-{xt}", "-D", "FLANNEL-FWD", "-d", "100.64.0.0/16", "-m", "comment", "--comment",
        "flanneld forward", "-j", "ACCEPT")
    rc, out, err = cli(capsys, "plan", *args)
    assert rc == 2 and out.splitlines()[-2:] == [
        f'  + rule iptables-{xt} -t filter -A FLANNEL-FWD -d 100.64.0.0/16 -m comment --comment "flanneld forward"'
        " -j ACCEPT", "Plan: 1 to create, 0 to update, 0 to delete."], out
    rc, out, err = cli(capsys, "show", *args)
    assert rc == 2 and f"[missing]  rule iptables-{xt} -t filter -A FLANNEL-FWD -d 100.64.0.0/16" in out
    rc, out, err = cli(capsys, "apply", *args, "--output", "json")
    assert rc == 0 and json.loads(out)["summary"] == {"create": 1, "update": 0, "delete": 0}
    assert ours(save(node.ns, xt)) == FWD + MASQ

    # Without the tools the rules are skipped with a note, and the rest still works.
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    rc, out, err = cli(capsys, "plan", *args)
    assert rc == 0 and err == "note: rules skipped: iptables is not installed (Debian package iptables)\n", err


@pytest.mark.parametrize("mode", MODES)
def test_dual_stack_writes_the_ipv6_twins(netns, mode):
    from dataclasses import replace
    from ipaddress import IPv6Network

    conf = config(enable_nftables=mode == "nftables", enable_ipv6=True, ipv6_network=IPv6Network("fd00:64::/56"),
                  ipv6_subnet_len=64)
    mine = replace(own(), ipv6_subnet=IPv6Network("fd00:64:0:1::/64"))
    rr = reconciler(netns, mode)
    flags = RuleFlags(ip_masq=True)
    results = rr.apply(rr.plan(rr.desired(conf, mine, flags)))
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    assert rr.plan(rr.desired(conf, mine, flags)).in_sync
    if mode == "nftables":
        text = run(netns, "nft", "list", "table", "ip6", "flannel-ipv6").stdout
        assert "ip6 saddr fd00:64::/56 ip6 daddr != ff00::/8 masquerade fully-random" in text
        assert "ip6 saddr fd00:64::/56 accept" in text
    else:
        xt = xt_of(mode)
        v6 = run(netns, f"ip6tables-{xt}-save", "-t", "nat").stdout + run(netns, f"ip6tables-{xt}-save").stdout
        assert ('-A FLANNEL-POSTRTG -s fd00:64::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" '
                '-j MASQUERADE --random-fully') in v6
        assert '-A FLANNEL-FWD -d fd00:64::/56 -m comment --comment "flanneld forward" -j ACCEPT' in v6
        assert ours(save(netns, xt)) == FWD + MASQ        # and the IPv4 set beside it


@pytest.mark.parametrize("mode", [m for m in MODES if m != "nftables"])
def test_a_stale_jump_with_quotes_in_its_comment_goes_and_the_foreign_twin_stays(netns, mode):
    """The one place a rule read from the kernel is written back (``-D``): quoted as iptables-save does."""
    xt = xt_of(mode)
    run(netns, f"iptables-{xt}", "-N", "FLANNEL-FWD")
    run(netns, f"iptables-{xt}", "-A", "FORWARD", "-m", "comment", "--comment", 'old "flanneld" \\ run',
        "-j", "FLANNEL-FWD")
    run(netns, f"iptables-{xt}", "-A", "FORWARD", "-m", "comment", "--comment", 'old "flanneld" \\ run',
        "-j", "ACCEPT")
    converge(reconciler(netns, mode), mode, RuleFlags())
    assert ours(save(netns, xt)) == FWD
    assert '-A FORWARD -m comment --comment "old \\"flanneld\\" \\\\ run" -j ACCEPT' in save(netns, xt)


def test_nftables_mode_reads_an_iptables_drop_policy_and_warns(netns):
    run(netns, "iptables-nft", "-P", "FORWARD", "DROP")
    rr = reconciler(netns, "nftables")
    converge(rr, "nftables", RuleFlags())
    assert "cannot override" in rr.forward_warning(cfg("nftables"))
    assert rr.forward_warning(cfg("iptables-nft")) is None
