"""The rules a node must have: a pure function of (config, our lease, flags).

flanneld's rule set, rule for rule and in its order (flannel
``pkg/trafficmngr/iptables`` and ``nftables``; docs/traffic-rules.md):

* forward (``--iptables-forward-rules``, default on): accept what comes
  from or goes to the Network, so a FORWARD policy of DROP (Docker's) does
  not cut pods off from each other;
* masquerade (``--ip-masq``): leave kube-proxy's marked packets and
  pod-to-pod traffic alone, masquerade what leaves the Network (not
  multicast) and what the host sends into it.

The same for IPv6 with ``ff00::/8`` as the multicast range.  No I/O: the
caller says whether the host's tools can do ``--random-fully``.
"""
from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from reconciler.core.config import NetworkConfig
from reconciler.core.leases import Lease
from reconciler.rules.model import (FWD_CHAIN, MASQ_CHAIN, NFT_TABLES, OUR_CHAINS, Family, IptChain, IptRule, NftChain,
                    NftTable, RuleFlags, RuleSet)

__all__ = ["desired_rules", "KUBE_PROXY_MARK", "MASQ_COMMENT", "FWD_COMMENT"]

#: kube-proxy marks the packets it wants masqueraded itself; flanneld returns
#: on them so they are not NATed twice (``trafficmngr.KubeProxyMark``).
KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
_MULTICAST = {"ipv4": "224.0.0.0/4", "ipv6": "ff00::/8"}
_NFT_PROTO = {"ipv4": "ip", "ipv6": "ip6"}


def desired_rules(config: NetworkConfig, own: Lease, flags: RuleFlags, *, random_fully: bool = True) -> RuleSet:
    """flanneld's rules for this node, in its mode (``EnableNFTables``) and order.

    ``random_fully``: whether the host supports ``--random-fully`` /
    ``fully-random`` (flanneld asks iptables, resp. nft); it is used unless
    ``--ip-masq-fully-random-disable``.
    """
    fully = random_fully and not flags.masq_fully_random_disable
    families: list[tuple[Family, IPv4Network | IPv6Network, IPv4Network | IPv6Network]] = []
    if config.enable_ipv4 and config.network is not None:
        families.append(("ipv4", config.network, own.subnet))
    if config.enable_ipv6 and config.ipv6_network is not None and own.ipv6_subnet is not None:
        families.append(("ipv6", config.ipv6_network, own.ipv6_subnet))
    if config.enable_nftables:
        tables = tuple(t for fam, net, sub in families if (t := _nft_table(fam, str(net), str(sub), flags, fully)))
        return RuleSet("nftables", nftables=tables)
    chains: list[IptChain] = []
    for fam, net, sub in families:
        if flags.forward_rules:
            chains.append(_chain(fam, FWD_CHAIN, _forward_specs(str(net))))
        if flags.ip_masq:
            chains.append(_chain(fam, MASQ_CHAIN, _masq_specs(fam, str(net), str(sub), fully)))
    return RuleSet("iptables", iptables=tuple(chains))


def _chain(family: Family, name: str, specs: list[tuple[str, ...]]) -> IptChain:
    table, builtin = OUR_CHAINS[name]
    comment = FWD_COMMENT if name == FWD_CHAIN else MASQ_COMMENT
    # The jump rule comes first in flanneld's list, appended to the built-in chain.
    jump = IptRule(family, table, builtin, ("-m", "comment", "--comment", comment, "-j", name))
    return IptChain(family, table, name, (jump,), tuple(IptRule(family, table, name, s) for s in specs))


def _forward_specs(net: str) -> list[tuple[str, ...]]:
    c = ("-m", "comment", "--comment", FWD_COMMENT)
    return [("-s", net, *c, "-j", "ACCEPT"), ("-d", net, *c, "-j", "ACCEPT")]


def _masq_specs(family: Family, net: str, sub: str, fully: bool) -> list[tuple[str, ...]]:
    c = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if fully else ("-j", "MASQUERADE")
    return [
        ("-m", "mark", "--mark", KUBE_PROXY_MARK, *c, "-j", "RETURN"),   # kube-proxy's own
        ("-s", sub, "-d", net, *c, "-j", "RETURN"),                     # our pods to pods
        ("-s", net, "-d", sub, *c, "-j", "RETURN"),                     # pods to our pods
        ("!", "-s", net, "-d", sub, *c, "-j", "RETURN"),                # outside to our pods
        ("-s", net, "!", "-d", _MULTICAST[family], *c, *masq),          # pods to outside
        ("!", "-s", net, "-d", net, *c, *masq),                         # host to remote pods
    ]


def _nft_table(family: Family, net: str, sub: str, flags: RuleFlags, fully: bool) -> NftTable | None:
    p = _NFT_PROTO[family]
    chains = []
    if flags.forward_rules:
        chains.append(NftChain("forward", "filter", "forward", 0,
                               (f"{p} saddr {net} accept", f"{p} daddr {net} accept")))
    if flags.ip_masq:
        masq = "masquerade fully-random" if fully else "masquerade"
        # flanneld's nftables rules, including its fourth rule, which says
        # "saddr != our subnet" where the iptables twin says "! -s Network"
        # (docs/traffic-rules.md, "nftables differences").
        chains.append(NftChain("postrtg", "nat", "postrouting", 100, (
            "meta mark 0x00004000 return",
            f"{p} saddr {sub} {p} daddr {net} return",
            f"{p} saddr {net} {p} daddr {sub} return",
            f"{p} saddr != {sub} {p} daddr {net} return",
            f"{p} saddr {net} {p} daddr != {_MULTICAST[family]} {masq}",
            f"{p} saddr != {net} {p} daddr {net} {masq}",
        )))
    if not chains:
        return None
    nft_family, name = NFT_TABLES[family]
    return NftTable(nft_family, name, tuple(chains))
