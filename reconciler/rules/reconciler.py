"""The one entry point for rules: desired set, live read, plan, apply.

    rr = RuleReconciler(IptablesBackend(netns), NftablesBackend(netns))
    desired = rr.desired(config, own_lease, flags)
    plan = rr.plan(desired)          # RulePlan: kind "rule" changes
    results = rr.apply(plan)         # one OpResult per change

Both interfaces are always read: the mode in use gets the desired rules,
the other one loses whatever of ours it still holds (switching
``EnableNFTables`` cleans up after itself), and so does the iptables
backend the host does not use.
"""
from __future__ import annotations

import logging
from reconciler.core.config import NetworkConfig
from reconciler.core.leases import Lease
from reconciler.core.plan import OpResult
from reconciler.rules.desired import desired_rules
from reconciler.rules.iptables import IptablesBackend, ToolError
from reconciler.rules.model import RuleFlags, RuleSet
from reconciler.rules.nftables import NftablesBackend
from reconciler.rules.plan import LiveRules, RulePlan, make_rule_plan

__all__ = ["RuleReconciler", "br_netfilter_warnings", "forward_drop_warning"]

log = logging.getLogger("flannel_reconciler")

BR_NF = {"ipv4": "/proc/sys/net/bridge/bridge-nf-call-iptables",
         "ipv6": "/proc/sys/net/bridge/bridge-nf-call-ip6tables"}


def br_netfilter_warnings(config: NetworkConfig, values: dict[str, str | None]) -> list[str]:
    """flanneld's start-up check, as warnings: in iptables mode, bridged pod traffic must pass iptables.

    ``values`` maps each ``BR_NF`` path to its content (None: missing).
    flanneld exits when the file is missing; we warn and carry on (the
    overlay itself works without it; kube-proxy's services between pods of
    one node do not).
    """
    if config.enable_nftables:
        return []
    out = []
    fams = [f for f, on in (("ipv4", config.enable_ipv4), ("ipv6", config.enable_ipv6)) if on]
    for fam in fams:
        path = BR_NF[fam]
        v = values.get(path)
        if v is None:
            out.append(f"{path} is missing: br_netfilter is not loaded, so traffic between pods on one "
                       f"bridge bypasses iptables (kube-proxy services, network policies); "
                       f"run 'modprobe br_netfilter' (flanneld refuses to start without it)")
        elif v.strip() == "0":
            out.append(f"{path} is 0: traffic between pods on one bridge bypasses iptables; "
                       f"set it to 1 (sysctl net.bridge.{path.rsplit('/', 1)[1]}=1)")
    return out


def forward_drop_warning(config: NetworkConfig, policies: dict) -> str | None:
    """In nftables mode an iptables FORWARD policy of DROP wins over our accept rules.

    An nftables accept ends only its own base chain: the packet still meets
    every other base chain at the hook, and a drop there is final
    (docs/traffic-rules.md, "nftables mode and a DROP policy").
    """
    if not config.enable_nftables:
        return None
    for (fam, table, chain), policy in sorted(policies.items()):
        if table == "filter" and chain == "FORWARD" and policy == "DROP":
            return (f"{'iptables' if fam == 'ipv4' else 'ip6tables'} FORWARD policy is DROP: in nftables mode "
                    f"our accept rules cannot override it, so forwarded pod traffic is dropped")
    return None


class RuleReconciler:
    def __init__(self, iptables: IptablesBackend | None = None, nftables: NftablesBackend | None = None) -> None:
        self.iptables = iptables if iptables is not None else IptablesBackend()
        self.nftables = nftables if nftables is not None else NftablesBackend()
        self.policies: dict = {}
        self.last_live = LiveRules()

    def startup_warnings(self, config: NetworkConfig) -> list[str]:
        """flanneld's br_netfilter check, read inside our namespace (``/proc/sys/net`` is per namespace)."""
        values = {path: self.iptables.read_file(path) for path in BR_NF.values()}
        return br_netfilter_warnings(config, values)

    def forward_warning(self, config: NetworkConfig) -> str | None:
        """After a ``read``: an iptables FORWARD DROP policy our nftables rules cannot override."""
        return forward_drop_warning(config, self.policies)

    def desired(self, config: NetworkConfig, own: Lease, flags: RuleFlags) -> RuleSet:
        """flanneld's rules for this node, with ``--random-fully`` as this host supports it."""
        fully = True
        if flags.ip_masq and not flags.masq_fully_random_disable:
            try:
                fully = self.nftables.random_fully() if config.enable_nftables else self.iptables.random_fully()
            except ToolError:
                fully = False
        return desired_rules(config, own, flags, random_fully=fully)

    def read(self, mode: str) -> LiveRules:
        """Our rules in every interface present.  Raises ``ToolError`` when the mode's own tools are missing."""
        ipt: dict = {}
        refs: set = set()
        self.policies = {}
        backends = self.iptables.backends()
        if mode == "iptables" and not backends:
            raise ToolError("iptables is not installed (Debian package iptables)")
        xt = self.iptables.xt if backends else ""
        for b in backends:
            try:
                chains, r, policies = self.iptables.read(b)
            except ToolError:
                if b == xt:
                    raise
                continue  # the backend we do not use cannot be read (no kernel support): nothing to clean
            ipt[b] = chains
            refs |= r
            if b == xt:
                self.policies = policies
        try:
            nft = self.nftables.read()
        except ToolError:
            if mode == "nftables":
                raise
            nft = ()  # no nft: nothing of ours can be there
        return LiveRules(xt=xt, iptables=ipt, nftables=nft, referenced=frozenset(refs))

    def plan(self, desired: RuleSet) -> RulePlan:
        self.last_live = self.read(desired.mode)
        return make_rule_plan(desired, self.last_live)

    def apply(self, plan: RulePlan) -> list[OpResult]:
        """One transaction per (interface, backend, family); every change reports its transaction's outcome."""
        outcome: dict[tuple, str | None] = {}
        groups: dict[tuple, list] = {}
        for w in plan.ipt_writes:
            groups.setdefault(w.group, []).append(w)
        for group, writes in groups.items():
            _, xt, family = group
            try:
                self.iptables.apply(xt, family, writes)
                outcome[group] = None
            except ToolError as exc:
                outcome[group] = str(exc)
        if plan.nft_writes:
            try:
                self.nftables.apply(plan.nft_writes)
                outcome[("nftables",)] = None
            except ToolError as exc:
                outcome[("nftables",)] = str(exc)
        results = []
        for c in plan.changes:
            err = outcome.get(c.group)
            results.append(OpResult(c, err is None) if err is None
                           else OpResult(c, False, None, f"{c.obj.describe()}: {err}"))
        return results
