"""parse_network_config / require_vxlan against flanneld's config rules (docs/flannel-formats.md section 2)."""
from __future__ import annotations

import dataclasses
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from reconciler.core.config import DEFAULT_VXLAN_PORT, NetworkConfig, parse_network_config, require_vxlan
from reconciler.core.errors import ConfigError

FLANNEL_EXAMPLE = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def cfg(**top) -> NetworkConfig:
    """Parse a config built from keyword arguments (Backend defaults to vxlan)."""
    top.setdefault("Network", "10.244.0.0/16")
    top.setdefault("Backend", {"Type": "vxlan"})
    return parse_network_config(json.dumps(top))


def backend(**be) -> NetworkConfig:
    return cfg(Backend={"Type": "vxlan", **be})


def config_error(raw: str | bytes, key: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_network_config(raw)
    assert info.value.key == key
    assert key in str(info.value)  # the message names the key
    return info.value


# --- the documented example and defaults --------------------------------------

def test_flannel_example_gets_every_default():
    c = parse_network_config(FLANNEL_EXAMPLE)
    assert c == NetworkConfig(
        enable_ipv4=True, enable_ipv6=False,
        network=IPv4Network("10.244.0.0/16"), subnet_len=24,
        subnet_min=IPv4Address("10.244.1.0"), subnet_max=IPv4Address("10.244.255.0"),
        ipv6_network=None, ipv6_subnet_len=None, ipv6_subnet_min=None, ipv6_subnet_max=None,
        backend_type="vxlan", vni=1, port=8472, mtu=None,
        gbp=False, learning=False, direct_routing=False, enable_nftables=False,
    )
    assert c.device_name == "flannel.1"
    assert c.v6_device_name == "flannel-v6.1"
    require_vxlan(c)


def test_bytes_input():
    assert parse_network_config(FLANNEL_EXAMPLE.encode()) == parse_network_config(FLANNEL_EXAMPLE)


def test_config_is_frozen():
    c = parse_network_config(FLANNEL_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.vni = 2  # type: ignore[misc]


def test_host_bits_are_masked_like_go_parsecidr():
    assert cfg(Network="10.244.1.5/16").network == IPv4Network("10.244.0.0/16")


@pytest.mark.parametrize("network, subnet_len", [
    ("10.0.0.0/8", 24), ("10.244.0.0/16", 24), ("10.244.0.0/22", 24),
    ("10.244.0.0/23", 25), ("10.244.0.0/24", 26), ("10.244.0.0/27", 29), ("10.244.0.0/28", 30),
])
def test_subnet_len_default(network, subnet_len):
    assert cfg(Network=network).subnet_len == subnet_len


def test_network_smaller_than_28_is_refused():
    config_error(json.dumps({"Network": "10.244.0.0/29", "Backend": {"Type": "vxlan"}}), "Network")


def test_subnet_len_28_in_a_16():
    # flannel's docs use Network 10.1.0.0/16 with SubnetLen 28.
    c = cfg(Network="10.1.0.0/16", SubnetLen=28)
    assert c.subnet_len == 28
    assert c.subnet_min == IPv4Address("10.1.0.16")   # the first subnet is skipped
    assert c.subnet_max == IPv4Address("10.1.255.240")  # the last subnet


def test_subnet_len_zero_means_default():
    assert cfg(SubnetLen=0).subnet_len == 24


@pytest.mark.parametrize("network, subnet_len", [
    ("10.244.0.0/16", 31), ("10.244.0.0/16", 32), ("10.244.0.0/16", 17), ("10.244.0.0/16", 16),
    ("10.244.0.0/16", 8), ("10.244.0.0/28", 29),
])
def test_bad_subnet_len(network, subnet_len):
    config_error(json.dumps({"Network": network, "SubnetLen": subnet_len}), "SubnetLen")


@pytest.mark.parametrize("network, subnet_len", [("10.244.0.0/16", 18), ("10.244.0.0/16", 30),
                                                 ("10.244.0.0/28", 30)])
def test_edge_subnet_len_accepted(network, subnet_len):
    assert cfg(Network=network, SubnetLen=subnet_len).subnet_len == subnet_len


def test_explicit_subnet_min_max():
    c = cfg(SubnetMin="10.244.10.0", SubnetMax="10.244.20.0")
    assert (c.subnet_min, c.subnet_max) == (IPv4Address("10.244.10.0"), IPv4Address("10.244.20.0"))


def test_subnet_min_max_zero_means_default():
    # flannel compares against IP4(0): an explicit 0.0.0.0 is "not given".
    c = cfg(SubnetMin="0.0.0.0", SubnetMax="0.0.0.0")
    assert (c.subnet_min, c.subnet_max) == (IPv4Address("10.244.1.0"), IPv4Address("10.244.255.0"))


def test_half_the_address_space():
    # Masked to 0.0.0.0/1, which is not flannel's "empty" (the prefix is not 0).
    c = cfg(Network="1.0.0.0/1")
    assert c.network == IPv4Network("0.0.0.0/1")
    assert c.subnet_max == IPv4Address("127.255.255.0")


@pytest.mark.parametrize("extra, key", [
    ({"SubnetMin": "10.245.1.0"}, "SubnetMin"),
    ({"SubnetMin": "10.244.1.5"}, "SubnetMin"),
    ({"SubnetMax": "10.243.255.0"}, "SubnetMax"),
    ({"SubnetMax": "10.244.255.128"}, "SubnetMax"),
    ({"SubnetMin": "10.244.20.0", "SubnetMax": "10.244.10.0"}, "SubnetMin"),
    ({"SubnetMin": "10.244.1"}, "SubnetMin"),
    ({"SubnetMin": 5}, "SubnetMin"),
    ({"SubnetMin": None}, "SubnetMin"),  # flannel's IP4 is an Unmarshaler: null is parsed, and fails
    ({"SubnetMax": "::1"}, "SubnetMax"),
])
def test_bad_subnet_min_max(extra, key):
    config_error(json.dumps({"Network": "10.244.0.0/16", **extra}), key)


# --- Network presence and types ------------------------------------------------

@pytest.mark.parametrize("doc", [
    {}, {"Backend": {"Type": "vxlan"}}, {"Network": ""}, {"Network": "0.0.0.0/0"},
    {"Network": 5}, {"Network": None}, {"Network": True}, {"Network": ["10.244.0.0/16"]},
    {"Network": "10.244.0.0"}, {"Network": "10.244.0.0/255.255.0.0"}, {"Network": "10.244.0.0/33"},
    {"Network": "10.244.0.0/+16"}, {"Network": "10.244.0.0/16 "}, {"Network": "010.244.0.0/16"},
    {"Network": "fd00::/48"}, {"Network": "10.244.0.0/\u0661\u0666"},
])
def test_bad_network(doc):
    config_error(json.dumps(doc), "Network")


def test_leading_zero_prefix_accepted_like_go_dtoi():
    assert cfg(Network="10.244.0.0/016").network == IPv4Network("10.244.0.0/16")


def test_ipv4_disabled_needs_no_network():
    c = parse_network_config('{"EnableIPv4": false, "Backend": {"Type": "vxlan"}}')
    assert c.enable_ipv4 is False
    assert (c.network, c.subnet_len, c.subnet_min, c.subnet_max) == (None, None, None, None)


@pytest.mark.parametrize("doc, key", [
    ({"EnableIPv4": "true"}, "EnableIPv4"),
    ({"EnableIPv4": 1}, "EnableIPv4"),
    ({"EnableIPv6": "false"}, "EnableIPv6"),
    ({"EnableNFTables": 0}, "EnableNFTables"),
    ({"SubnetLen": "24"}, "SubnetLen"),
    ({"SubnetLen": 24.0}, "SubnetLen"),
    ({"SubnetLen": -1}, "SubnetLen"),
    ({"SubnetLen": True}, "SubnetLen"),
    ({"IPv6SubnetLen": "64"}, "IPv6SubnetLen"),
    ({"IPv6Network": 6}, "IPv6Network"),           # checked even while IPv6 is off: Go decodes it
    ({"IPv6SubnetMin": "10.0.0.0"}, "IPv6SubnetMin"),
    ({"IPv6SubnetMax": 7}, "IPv6SubnetMax"),
    ({"Backend": "vxlan"}, "Backend"),
    ({"Backend": ["vxlan"]}, "Backend"),
    ({"Backend": 1}, "Backend"),
    ({"Backend": {"Type": 5}}, "Backend.Type"),
    ({"Backend": {"Type": "vxlan", "VNI": "x"}}, "Backend.VNI"),
    ({"Backend": {"Type": "vxlan", "VNI": 1.0}}, "Backend.VNI"),
    ({"Backend": {"Type": "vxlan", "VNI": True}}, "Backend.VNI"),
    ({"Backend": {"Type": "vxlan", "Port": "8472"}}, "Backend.Port"),
    ({"Backend": {"Type": "vxlan", "MTU": "1500"}}, "Backend.MTU"),
    ({"Backend": {"Type": "vxlan", "GBP": "yes"}}, "Backend.GBP"),
    ({"Backend": {"Type": "vxlan", "Learning": 1}}, "Backend.Learning"),
    ({"Backend": {"Type": "vxlan", "DirectRouting": "true"}}, "Backend.DirectRouting"),
])
def test_wrong_json_type_names_the_key(doc, key):
    config_error(json.dumps({"Network": "10.244.0.0/16", **doc}), key)


@pytest.mark.parametrize("raw", [
    "[]", "5", '"config"', "null", "true", "", "{", '{"Network": "10.244.0.0/16"} x',
    '{"Network": NaN}', b"\xff\xfe{}", b'\xef\xbb\xbf{"Network":"10.244.0.0/16"}',
])
def test_not_a_json_object(raw):
    config_error(raw, "<root>")


# --- Go encoding/json key matching ---------------------------------------------

def test_keys_are_case_insensitive():
    c = parse_network_config('{"network": "10.244.0.0/16", "backend": {"type": "vxlan", "vni": 2}}')
    assert c.network == IPv4Network("10.244.0.0/16")
    assert (c.backend_type, c.vni, c.device_name) == ("vxlan", 2, "flannel.2")


def test_case_insensitive_everywhere():
    c = parse_network_config(json.dumps({
        "NETWORK": "10.1.0.0/16", "subnetlen": 28, "SUBNETMIN": "10.1.0.32", "subnetMax": "10.1.0.240",
        "enableipv6": True, "ipv6network": "2001:cafe:42::/56", "IPV6SUBNETLEN": 80,
        "enablenftables": True,
        "BACKEND": {"TYPE": "vxlan", "Vni": 7, "PORT": 4789, "mtu": 9000, "gbp": True,
                    "learning": True, "directrouting": True},
    }))
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (28, IPv4Address("10.1.0.32"), IPv4Address("10.1.0.240"))
    assert (c.enable_ipv6, c.ipv6_network, c.ipv6_subnet_len) == (True, IPv6Network("2001:cafe:42::/56"), 80)
    assert (c.vni, c.port, c.mtu, c.gbp, c.learning, c.direct_routing, c.enable_nftables) == \
        (7, 4789, 9000, True, True, True, True)


def test_unicode_case_folding_like_go():
    # Go's EqualFold maps the Kelvin sign to k and the long s to s.
    c = parse_network_config('{"Networ\u212a": "10.244.0.0/16", "\u017fubnetLen": 26, '
                             '"Backend": {"Type": "vxlan"}}')
    assert (c.network, c.subnet_len) == (IPv4Network("10.244.0.0/16"), 26)


def test_unknown_keys_ignored():
    c = parse_network_config(json.dumps({
        "Network": "10.244.0.0/16", "Foo": [1, {"x": None}], "Networks": ["x"],
        "Backend": {"Type": "vxlan", "MacPrefix": "0E-2A", "Name": "vxlan0", "Extra": 5},
    }))
    assert c == parse_network_config(FLANNEL_EXAMPLE)


def test_duplicate_keys_last_wins():
    c = parse_network_config('{"Network": "10.1.0.0/16", "network": "10.2.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert c.network == IPv4Network("10.2.0.0/16")


def test_duplicate_keys_each_type_checked():
    config_error('{"Network": 5, "network": "10.2.0.0/16"}', "Network")


def test_null_leaves_scalars_alone():
    # Go: null into a bool/int/string has no effect, so the default (or earlier value) stays.
    c = parse_network_config('{"EnableIPv4": null, "Network": "10.244.0.0/16", "SubnetLen": null, '
                             '"Backend": {"Type": "vxlan", "VNI": 3, "vni": null, "GBP": null, "Port": null}}')
    assert (c.enable_ipv4, c.subnet_len, c.vni, c.gbp, c.port) == (True, 24, 3, False, 8472)


# --- Backend ---------------------------------------------------------------------

def test_backend_absent_is_udp_and_refused():
    c = parse_network_config('{"Network": "10.244.0.0/16"}')
    assert c.backend_type == "udp"
    with pytest.raises(ConfigError) as info:
        require_vxlan(c)
    assert info.value.key == "Backend.Type"
    assert "only vxlan is supported" in str(info.value)
    assert "Backend.Type" in str(info.value)


@pytest.mark.parametrize("be, backend_type", [
    ({}, ""), (None, ""), ({"Type": None}, ""), ({"Type": "host-gw"}, "host-gw"),
    ({"Type": "ipip"}, "ipip"), ({"Type": "wireguard"}, "wireguard"),
])
def test_other_backends_parse_but_are_refused(be, backend_type):
    c = parse_network_config(json.dumps({"Network": "10.244.0.0/16", "Backend": be}))
    assert c.backend_type == backend_type
    assert c.vni == 1
    with pytest.raises(ConfigError, match="only vxlan is supported") as info:
        require_vxlan(c)
    assert info.value.key == "Backend.Type"


def test_backend_type_is_case_insensitive_like_flanneld():
    # flanneld looks backends up with strings.ToLower.
    c = backend(Type="VXLAN")
    assert c.backend_type == "vxlan"
    require_vxlan(c)


@pytest.mark.parametrize("vni, want", [(None, 1), (0, 1), (1, 1), (2, 2), (4096, 4096), (2**24 - 1, 2**24 - 1)])
def test_vni(vni, want):
    assert (backend() if vni is None else backend(VNI=vni)).vni == want


@pytest.mark.parametrize("vni", [-1, 2**24, 2**32, 10**30])
def test_bad_vni(vni):
    config_error(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": vni}}), "Backend.VNI")


@pytest.mark.parametrize("port, want", [(None, 8472), (0, DEFAULT_VXLAN_PORT), (1, 1), (4789, 4789), (65535, 65535)])
def test_port(port, want):
    assert (backend() if port is None else backend(Port=port)).port == want


@pytest.mark.parametrize("port", [-1, 65536, 100000])
def test_bad_port(port):
    config_error(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": port}}), "Backend.Port")


@pytest.mark.parametrize("mtu, want", [(None, None), (0, None), (118, 118), (1500, 1500), (9001, 9001), (65535, 65535)])
def test_mtu(mtu, want):
    assert (backend() if mtu is None else backend(MTU=mtu)).mtu == want


@pytest.mark.parametrize("mtu", [-1, 1, 67, 117, 65536])
def test_bad_mtu(mtu):
    config_error(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": mtu}}), "Backend.MTU")


def test_flags_default_false_and_json_tags():
    c = backend()
    assert (c.gbp, c.learning, c.direct_routing, c.enable_nftables) == (False, False, False, False)
    c = parse_network_config('{"Network":"10.244.0.0/16","EnableNFTables":true,'
                             '"Backend":{"Type":"vxlan","gbp":true,"learning":true,"directRouting":true}}')
    assert (c.gbp, c.learning, c.direct_routing, c.enable_nftables) == (True, True, True, True)


# --- IPv6 --------------------------------------------------------------------------

DUAL = {"Network": "10.42.0.0/16", "EnableIPv6": True, "IPv6Network": "2001:cafe:42::/56"}


def test_dual_stack_defaults():
    c = cfg(**DUAL)
    assert c.enable_ipv4 and c.enable_ipv6
    assert c.ipv6_network == IPv6Network("2001:cafe:42::/56")
    assert c.ipv6_subnet_len == 64
    assert c.ipv6_subnet_min == IPv6Address("2001:cafe:42:1::")
    assert c.ipv6_subnet_max == IPv6Address("2001:cafe:42:ff::")


def test_ipv6_fields_none_while_disabled():
    c = cfg(IPv6Network="2001:cafe:42::/56", IPv6SubnetLen=64)
    assert (c.ipv6_network, c.ipv6_subnet_len, c.ipv6_subnet_min, c.ipv6_subnet_max) == (None,) * 4


def test_ipv6_host_bits_masked():
    assert cfg(**{**DUAL, "IPv6Network": "2001:cafe:42::1/56"}).ipv6_network == IPv6Network("2001:cafe:42::/56")


@pytest.mark.parametrize("prefix, want", [(32, 64), (48, 64), (62, 64), (63, 65), (100, 102), (124, 126)])
def test_ipv6_subnet_len_default(prefix, want):
    assert cfg(**{**DUAL, "IPv6Network": f"fd00::/{prefix}"}).ipv6_subnet_len == want


@pytest.mark.parametrize("extra, key", [
    ({"IPv6Network": None}, "IPv6Network"),
    ({"IPv6Network": ""}, "IPv6Network"),
    ({"IPv6Network": "::/0"}, "IPv6Network"),            # flannel's Empty()
    ({"IPv6Network": "fd00::/125"}, "IPv6Network"),
    ({"IPv6Network": "10.0.0.0/8"}, "IPv6Network"),
    ({"IPv6Network": "fe80::/64%eth0"}, "IPv6Network"),
    ({"IPv6SubnetLen": 127}, "IPv6SubnetLen"),
    ({"IPv6SubnetLen": 57}, "IPv6SubnetLen"),
    ({"IPv6SubnetMin": "2001:cafe:43::"}, "IPv6SubnetMin"),
    ({"IPv6SubnetMin": "2001:cafe:42:1::1"}, "IPv6SubnetMin"),
    ({"IPv6SubnetMax": "2001:cafe:42:ff::8000"}, "IPv6SubnetMax"),
    ({"IPv6SubnetMax": "2001:cafe:41::"}, "IPv6SubnetMax"),
    ({"IPv6SubnetMin": "2001:cafe:42:20::", "IPv6SubnetMax": "2001:cafe:42:10::"}, "IPv6SubnetMin"),
])
def test_bad_ipv6(extra, key):
    doc = {**DUAL, **extra}
    if doc["IPv6Network"] is None:
        del doc["IPv6Network"]
    config_error(json.dumps(doc), key)


def test_ipv6_network_missing_when_enabled():
    config_error('{"Network": "10.42.0.0/16", "EnableIPv6": true}', "IPv6Network")


def test_ipv6_subnet_min_max_null_or_zero_means_default():
    # Go pointers: null leaves them nil, and flannel's IsEmpty treats :: as nil.
    c = cfg(**DUAL, IPv6SubnetMin=None, IPv6SubnetMax="::")
    assert (c.ipv6_subnet_min, c.ipv6_subnet_max) == (IPv6Address("2001:cafe:42:1::"), IPv6Address("2001:cafe:42:ff::"))


def test_ipv6_explicit_range_and_len():
    c = cfg(**DUAL, IPv6SubnetLen=80, IPv6SubnetMin="2001:cafe:42:0:1::", IPv6SubnetMax="2001:cafe:42:ff:ffff::")
    assert (c.ipv6_subnet_len, c.ipv6_subnet_min, c.ipv6_subnet_max) == \
        (80, IPv6Address("2001:cafe:42:0:1::"), IPv6Address("2001:cafe:42:ff:ffff::"))
