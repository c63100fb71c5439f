"""Subnet keys, lease values, snapshots and validate_leases (docs/flannel-formats.md sections 1 and 3)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.errors import LeaseError
from reconciler.core.leases import (
    Lease,
    LeaseSnapshot,
    RawKV,
    Skipped,
    encode_lease_value,
    parse_lease,
    parse_snapshot,
    parse_subnet_key,
    snapshot_to_json,
    subnet_key,
    validate_leases,
)

PREFIX = "/coreos.com/network"
#: Documentation/reservations.md, byte for byte.
RES_VALUE = ('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
             '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')
DUAL_KEY = "10.42.1.0-24&2001:cafe:42:1::-64"
DUAL_VALUE = ('{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan",'
              '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
              '"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}')
CONFIG = parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL_CONFIG = parse_network_config('{"Network":"10.42.0.0/16","EnableIPv6":true,'
                                   '"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}')
CONFIG_KV = RawKV(f"{PREFIX}/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')


def value(public_ip: str = "192.168.64.3", mac: str = "c6:d2:32:6f:8f:44", vni: int = 1, **extra) -> str:
    doc = {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "vxlan",
           "BackendData": {"VNI": vni, "VtepMAC": mac}, **extra}
    return json.dumps(doc, separators=(",", ":"))


def kv(subkey: str, val: str, lease: int = 7, rev: int = 1) -> RawKV:
    return RawKV(f"{PREFIX}/subnets/{subkey}", val, lease, rev)


def mac_of(i: int) -> str:
    return ":".join(f"{b:02x}" for b in (0x0A, 0x58, 0, 0, i >> 8, i & 0xFF))


# --- subnet keys --------------------------------------------------------------------

@pytest.mark.parametrize("key, v4, v6", [
    ("10.244.1.0-24", "10.244.1.0/24", None),
    ("10.12.13.0-24", "10.12.13.0/24", None),                         # flannel's own test key
    ("10.12.13.0-24&fd00:12:13::-56", "10.12.13.0/24", "fd00:12:13::/56"),
    (DUAL_KEY, "10.42.1.0/24", "2001:cafe:42:1::/64"),
    ("10.1.0.16-28", "10.1.0.16/28", None),
    ("0.0.0.0-0", "0.0.0.0/0", None),
    ("10.244.1.0-024", "10.244.1.0/24", None),                        # Go's ParseUint takes leading zeros
    # Anchored only at the end, like flanneld, which matches the full etcd key.
    (f"{PREFIX}/subnets/10.244.1.0-24", "10.244.1.0/24", None),
    ("junk10.244.1.0-24", "10.244.1.0/24", None),
])
def test_parse_subnet_key(key, v4, v6):
    assert parse_subnet_key(key) == (IPv4Network(v4), IPv6Network(v6) if v6 else None)


@pytest.mark.parametrize("key, fragment", [
    ("", "not a subnet key"),
    ("config", "not a subnet key"),
    ("10.244.1.0", "not a subnet key"),
    ("10.244.1.0/24", "not a subnet key"),
    ("10.244.1.0-24/", "not a subnet key"),
    ("10.244.1.0-24\n", "not a subnet key"),                          # Go's $ is end of text
    ("10.244.1.0-24&2001:CAFE:42:1::-64", "not a subnet key"),        # the v6 class is lowercase
    ("10.244.1.0-24&2001:cafe:42:1::", "not a subnet key"),
    ("\u0661\u0660.244.1.0-24", "not a subnet key"),                  # \d is ASCII in Go
    ("10.244.1x0-24", "not an IPv4 address"),                         # the unescaped-dot quirk matches it
    ("10.244.01.0-24", "not an IPv4 address"),
    ("10.244.1.256-24", "not an IPv4 address"),
    ("10.244.1.5-24", "not aligned"),
    ("10.244.1.0-16", "not aligned"),
    ("10.244.1.0-33", "prefix length"),
    ("10.244.1.1-32", "prefix length"),                               # flannel: ParseUint(..., 5) caps at 31
    ("10.244.1.0-99999999999999999999999", "prefix length"),
    ("10.42.1.0-24&2001:cafe:42:1::1-64", "not aligned"),
    ("10.42.1.0-24&2001:cafe:42:1::-128", "prefix length"),
    ("10.42.1.0-24&1::2::3-64", "not an IPv6 address"),
    ("10.42.1.0-24&:::-64", "not an IPv6 address"),
])
def test_bad_subnet_key(key, fragment):
    with pytest.raises(LeaseError) as info:
        parse_subnet_key(key)
    assert info.value.key == key
    assert fragment in info.value.reason


@pytest.mark.parametrize("v4, v6, key", [
    ("10.244.1.0/24", None, "10.244.1.0-24"),
    ("10.42.1.0/24", "2001:cafe:42:1::/64", DUAL_KEY),
    ("10.42.1.0/24", "2001:CAFE:0042:0001:0000::/64", DUAL_KEY),  # RFC 5952 form, like Go's String()
    ("10.12.13.0/24", "fd00:12:13::/56", "10.12.13.0-24&fd00:12:13::-56"),
    ("10.0.0.0/24", "fd00:0:0:1:0:0:0:0/64", "10.0.0.0-24&fd00:0:0:1::-64"),
])
def test_subnet_key(v4, v6, key):
    assert subnet_key(IPv4Network(v4), IPv6Network(v6) if v6 else None) == key
    assert parse_subnet_key(key) == (IPv4Network(v4), IPv6Network(v6) if v6 else None)


# --- lease values: exact bytes ------------------------------------------------------------

def test_encode_reservations_md_example():
    assert encode_lease_value("192.168.64.3", "c6:d2:32:6f:8f:44", 1) == RES_VALUE


def test_encode_dual_stack():
    got = encode_lease_value("10.0.0.1", "c6:d2:32:6f:8f:44", 1, public_ipv6="fd00::1",
                             v6_vtep_mac="c6:d2:32:6f:8f:45")
    assert got == DUAL_VALUE


@pytest.mark.parametrize("raw_mac", ["C6:D2:32:6F:8F:44", "c6-d2-32-6f-8f-44", "c6d2.326f.8f44", "C6D2.326F.8F44"])
def test_encode_normalises_mac(raw_mac):
    assert encode_lease_value("192.168.64.3", raw_mac, 1) == RES_VALUE


def test_encode_details():
    v = encode_lease_value("10.0.0.1", "0a:58:0a:f4:01:01", 4096, public_ipv6="FD00:0:0::1",
                           v6_vtep_mac="0a:58:0a:f4:01:02", v6_vni=7)
    assert not v.endswith("\n")
    assert v == ('{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan",'
                 '"BackendData":{"VNI":4096,"VtepMAC":"0a:58:0a:f4:01:01"},'
                 '"BackendV6Data":{"VNI":7,"VtepMAC":"0a:58:0a:f4:01:02"}}')
    # BackendType is omitempty in Go.
    assert encode_lease_value("1.2.3.4", "0a:00:00:00:00:01", 1, backend_type="") == \
        '{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}'


@pytest.mark.parametrize("args, kwargs", [
    (("1.2.3", "0a:00:00:00:00:01", 1), {}),
    (("1.2.3.4", "0a:00:00:00:00", 1), {}),
    (("1.2.3.4", "01:00:5e:00:00:01", 1), {}),
    (("1.2.3.4", "0a:00:00:00:00:01", -1), {}),
    (("1.2.3.4", "0a:00:00:00:00:01", True), {}),
    (("1.2.3.4", "0a:00:00:00:00:01", 2**32), {}),
    (("1.2.3.4", "0a:00:00:00:00:01", 1), {"v6_vtep_mac": "0a:00:00:00:00:02"}),  # no PublicIPv6
    (("1.2.3.4", "0a:00:00:00:00:01", 1), {"public_ipv6": "1.2.3.4"}),
    (("127.0.0.1", "0a:00:00:00:00:01", 1), {}),
    (("1.2.3.4", "0a:00:00:00:00:01", 1), {"public_ipv6": "::1"}),
    (("1.2.3.4", "0a:00:00:00:00:01", 1), {"v6_vni": 1}),
])
def test_encode_refuses_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        encode_lease_value(*args, **kwargs)


@pytest.mark.parametrize("key, raw", [("10.5.52.0-24", RES_VALUE), (DUAL_KEY, DUAL_VALUE)])
def test_parse_encode_round_trip_is_exact(key, raw):
    lease = parse_lease(key, raw, 0x694D854330FC5110)
    assert lease.etcd_lease == 0x694D854330FC5110
    assert not lease.is_reservation
    again = encode_lease_value(lease.public_ip, lease.vtep_mac, lease.vni, lease.public_ipv6,
                               lease.v6_vtep_mac, lease.v6_vni, lease.backend_type)
    assert again == raw


def test_parse_reservations_md_example():
    assert parse_lease("10.5.52.0-24", RES_VALUE) == Lease(
        key="10.5.52.0-24", subnet=IPv4Network("10.5.52.0/24"), ipv6_subnet=None,
        public_ip="192.168.64.3", public_ipv6=None, backend_type="vxlan",
        vni=1, vtep_mac="c6:d2:32:6f:8f:44", etcd_lease=0,
    )
    assert parse_lease("10.5.52.0-24", RES_VALUE).is_reservation


def test_parse_dual_stack_example():
    lease = parse_lease(DUAL_KEY, DUAL_VALUE, 5)
    assert lease.ipv6_subnet == IPv6Network("2001:cafe:42:1::/64")
    assert (lease.public_ipv6, lease.v6_vni, lease.v6_vtep_mac) == ("fd00::1", 1, "c6:d2:32:6f:8f:45")


def test_lease_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_lease("10.5.52.0-24", RES_VALUE).public_ip = "1.1.1.1"  # type: ignore[misc]


def test_parse_is_case_insensitive_and_normalises():
    raw = ('{"publicip":"192.168.64.3","PUBLICIPV6":null,"backendtype":"vxlan",'
           '"backenddata":{"vni":1,"VTEPMAC":"C6-D2-32-6F-8F-44"},"Unknown":[1]}')
    assert parse_lease("10.5.52.0-24", raw) == parse_lease("10.5.52.0-24", RES_VALUE)


@pytest.mark.parametrize("mac", ["c6d2.326f.8f44", "C6:D2:32:6F:8F:44", "c6-d2-32-6f-8f-44"])
def test_parse_accepts_go_mac_forms(mac):
    assert parse_lease("10.5.52.0-24", value(mac=mac)).vtep_mac == "c6:d2:32:6f:8f:44"


def test_parse_duplicate_keys_last_wins():
    raw = value()[:-1] + ',"publicip":"192.168.64.9"}'
    assert parse_lease("10.5.52.0-24", raw).public_ip == "192.168.64.9"


def test_parse_canonicalises_public_ipv6():
    raw = value(PublicIPv6="FD00:0:0::1", BackendV6Data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"})
    assert parse_lease("10.42.1.0-24&fd00:1::-64", raw).public_ipv6 == "fd00::1"


def test_non_vxlan_lease_still_parses():
    lease = parse_lease("10.244.3.0-24", '{"PublicIP":"10.0.0.3","PublicIPv6":null,"BackendType":"host-gw"}')
    assert (lease.backend_type, lease.vni, lease.vtep_mac) == ("host-gw", None, None)


def test_public_ipv6_without_v6_subnet_is_recorded():
    lease = parse_lease("10.244.3.0-24", value(PublicIPv6="fd00::3"))
    assert (lease.ipv6_subnet, lease.public_ipv6) == (None, "fd00::3")


def test_vni_zero_parses():
    # A VNI is only compared by validate_leases; 0 is a uint32 flanneld would decode.
    assert parse_lease("10.244.3.0-24", value(vni=0)).vni == 0


# --- bad leases: one Skipped each ----------------------------------------------------------

V6_DATA = {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}
BAD = [
    # (subnet key, raw value, a word of the reason)
    ("10.244.1.0-24", "", "not valid JSON"),
    ("10.244.1.0-24", "{", "not valid JSON"),
    ("10.244.1.0-24", '{"PublicIP":"1.2.3.4"} x', "not valid JSON"),
    ("10.244.1.0-24", '{"PublicIP":NaN}', "not valid JSON"),
    ("10.244.1.0-24", "[]", "JSON object"),
    ("10.244.1.0-24", "null", "JSON object"),
    ("10.244.1.0-24", '"x"', "JSON object"),
    ("10.244.1.0-24", '{"PublicIPv6":null,"BackendType":"vxlan"}', "PublicIP is missing"),
    ("10.244.1.0-24", value(public_ip=None), "PublicIP"),
    ("10.244.1.0-24", value(public_ip=5), "PublicIP"),
    ("10.244.1.0-24", value(public_ip="1.2.3"), "PublicIP"),
    ("10.244.1.0-24", value(public_ip="01.2.3.4"), "PublicIP"),
    ("10.244.1.0-24", value(public_ip="fd00::1"), "PublicIP"),
    ("10.244.1.0-24", value(public_ip="127.0.0.1"), "PublicIP 127.0.0.1"),
    ("10.244.1.0-24", value(public_ip="224.0.0.1"), "PublicIP 224.0.0.1"),
    ("10.244.1.0-24", value(public_ip="0.0.0.0"), "PublicIP 0.0.0.0"),
    ("10.244.1.0-24", value(public_ip="255.255.255.255"), "PublicIP 255.255.255.255"),
    ("10.244.1.0-24", value(PublicIPv6="1.2.3.4"), "PublicIPv6"),
    ("10.244.1.0-24", value(PublicIPv6="::1"), "PublicIPv6 ::1"),
    ("10.244.1.0-24", value(PublicIPv6="ff02::1"), "PublicIPv6 ff02::1"),
    ("10.244.1.0-24", value(PublicIPv6="::"), "PublicIPv6 ::"),
    ("10.244.1.0-24", value(PublicIPv6="fe80::1%eth0"), "PublicIPv6"),
    ("10.244.1.0-24", value(PublicIPv6=6), "PublicIPv6"),
    ("10.244.1.0-24", value(PublicIPv6="::ffff:1.2.3.4"), "IPv4-mapped"),
    # The unit test's minimal value has no BackendType at all.
    ("10.244.1.0-24", '{"PublicIP":"1.2.3.4","PublicIPv6":null}', "BackendType is missing"),
    ("10.244.1.0-24", value(BackendType=None), "BackendType is missing"),
    ("10.244.1.0-24", value(BackendType=""), "BackendType is missing"),
    ("10.244.1.0-24", value(BackendType=5), "BackendType"),
    ("10.244.1.0-24", '{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"vxlan"}', "BackendData is missing"),
    ("10.244.1.0-24", value(BackendData=None), "BackendData must be an object"),
    ("10.244.1.0-24", value(BackendData="c6:d2:32:6f:8f:44"), "BackendData must be an object"),
    ("10.244.1.0-24", value(BackendData=[]), "BackendData must be an object"),
    ("10.244.1.0-24", value(BackendData={"VNI": 1}), "VtepMAC is missing"),
    ("10.244.1.0-24", value(mac=None), "VtepMAC"),
    ("10.244.1.0-24", value(mac=5), "VtepMAC"),
    ("10.244.1.0-24", value(mac="zz:d2:32:6f:8f:44"), "not a MAC"),
    ("10.244.1.0-24", value(mac="c6:d2:32:6f:8f"), "not a MAC"),
    ("10.244.1.0-24", value(mac="c6:d2-32:6f:8f:44"), "not a MAC"),
    ("10.244.1.0-24", value(mac=" c6:d2:32:6f:8f:44"), "not a MAC"),
    ("10.244.1.0-24", value(mac="02:00:5e:10:00:00:00:01"), "8-byte"),
    ("10.244.1.0-24", value(mac="0200.5e10.0000.0001"), "8-byte"),
    ("10.244.1.0-24", value(mac="00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"), "20-byte"),
    ("10.244.1.0-24", value(mac="01:00:5e:00:00:01"), "multicast"),
    ("10.244.1.0-24", value(mac="ff:ff:ff:ff:ff:ff"), "multicast"),
    ("10.244.1.0-24", value(mac="00:00:00:00:00:00"), "all-zero"),
    ("10.244.1.0-24", value(BackendData={"VtepMAC": "c6:d2:32:6f:8f:44"}), "VNI is missing"),
    ("10.244.1.0-24", value(vni=-1), "VNI -1"),
    ("10.244.1.0-24", value(vni="1"), "VNI"),
    ("10.244.1.0-24", value(vni=1.5), "VNI"),
    ("10.244.1.0-24", value(vni=True), "VNI"),
    ("10.244.1.0-24", value(vni=2**32), "VNI"),
    # Key and value disagree on dual stack.
    ("10.244.1.0-24&fd00:1::-64", value(), "no PublicIPv6"),
    ("10.244.1.0-24&fd00:1::-64", value(PublicIPv6="fd00::9"), "no BackendV6Data"),
    ("10.244.1.0-24&fd00:1::-64", value(PublicIPv6="fd00::9", BackendV6Data=None), "BackendV6Data must be an object"),
    ("10.244.1.0-24", value(BackendV6Data=V6_DATA), "key has no IPv6"),
    ("10.244.1.0-24", value(PublicIPv6="fd00::9", BackendV6Data=V6_DATA), "key has no IPv6"),
    ("10.244.1.0-24&fd00:1::-64", value(PublicIPv6="fd00::9", BackendV6Data={"VNI": 1, "VtepMAC": "33:33:00:00:00:01"}),
     "BackendV6Data.VtepMAC"),
    # Bad keys.
    ("10.244.1.5-24", value(), "not aligned"),
    ("10.244.1x0-24", value(), "not an IPv4 address"),
    ("not-a-subnet", value(), "not a subnet key"),
]


@pytest.mark.parametrize("key, raw, fragment", BAD)
def test_parse_lease_rejects(key, raw, fragment):
    with pytest.raises(LeaseError) as info:
        parse_lease(key, raw)
    assert info.value.key == key
    assert fragment in info.value.reason, info.value.reason


@pytest.mark.parametrize("key, raw, fragment", BAD)
def test_bad_lease_is_one_skipped(key, raw, fragment):
    good = kv("10.244.200.0-24", value(public_ip="192.168.0.200", mac=mac_of(200)))
    bad = kv(key, raw)
    leases, skipped = validate_leases(CONFIG, [CONFIG_KV, good, bad], PREFIX)
    assert [lease.key for lease in leases] == ["10.244.200.0-24"]
    assert len(skipped) == 1
    assert skipped[0].key == f"{PREFIX}/subnets/{key}"
    assert fragment in skipped[0].reason, skipped[0].reason


# --- validate_leases: fit with the config -----------------------------------------------------

def dual_value(n: int, v6_vni: int = 1) -> str:
    return value(public_ip=f"192.168.1.{n}", mac=mac_of(n), PublicIPv6=f"fd00::{n}",
                 BackendV6Data={"VNI": v6_vni, "VtepMAC": mac_of(0x100 + n)})


MISFITS = [
    (CONFIG, "10.245.1.0-24", value(), "outside Network 10.244.0.0/16"),
    (CONFIG, "10.244.1.0-25", value(), "SubnetLen is 24"),
    (CONFIG, "10.244.0.0-23", value(), "SubnetLen is 24"),
    (CONFIG, "10.0.0.0-8", value(), "outside Network"),
    (CONFIG, "10.244.1.0-24", '{"PublicIP":"10.0.0.3","PublicIPv6":null,"BackendType":"host-gw"}', "not vxlan"),
    (CONFIG, "10.244.1.0-24", value(BackendType="udp"), "not vxlan"),
    (CONFIG, "10.244.1.0-24", value(BackendType="VXLAN"), "not vxlan"),   # flanneld compares exactly
    (CONFIG, "10.244.1.0-24", value(vni=2), "VNI 2 differs"),
    (CONFIG, "10.244.1.0-24", value(vni=0), "VNI 0 differs"),
    (DUAL_CONFIG, "10.42.1.0-24&2001:cafe:43:1::-64", dual_value(1), "outside IPv6Network"),
    (DUAL_CONFIG, "10.42.1.0-24&2001:cafe:42:1::-80", dual_value(1), "IPv6SubnetLen is 64"),
    (DUAL_CONFIG, DUAL_KEY, dual_value(1, v6_vni=9), "BackendV6Data.VNI 9 differs"),
]


@pytest.mark.parametrize("config, key, raw, fragment", MISFITS)
def test_misfit_is_one_skipped(config, key, raw, fragment):
    leases, skipped = validate_leases(config, [kv(key, raw)], PREFIX)
    assert leases == []
    assert [s.key for s in skipped] == [f"{PREFIX}/subnets/{key}"]
    assert fragment in skipped[0].reason, skipped[0].reason


def test_subnet_min_max_not_enforced():
    # 10.244.0.0/24 is below the default SubnetMin (the first subnet is never
    # allocated), yet a peer holding it is still routed to, as flanneld does.
    narrowed = parse_network_config('{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0",'
                                    '"SubnetMax":"10.244.20.0","Backend":{"Type":"vxlan"}}')
    kvs = [kv("10.244.0.0-24", value(public_ip="192.168.0.1", mac=mac_of(1))),
           kv("10.244.255.0-24", value(public_ip="192.168.0.2", mac=mac_of(2)))]
    for config in (CONFIG, narrowed):
        leases, skipped = validate_leases(config, kvs, PREFIX)
        assert [lease.key for lease in leases] == ["10.244.0.0-24", "10.244.255.0-24"]
        assert skipped == []


def test_dual_stack_leases():
    kvs = [kv(DUAL_KEY, DUAL_VALUE), kv("10.42.2.0-24", value(public_ip="10.0.0.2", mac=mac_of(2)))]
    leases, skipped = validate_leases(DUAL_CONFIG, kvs, PREFIX)
    assert skipped == []
    # A v4-only peer in a dual-stack cluster is kept (it only gets IPv4 entries).
    assert [(lease.key, lease.ipv6_subnet) for lease in leases] == [
        (DUAL_KEY, IPv6Network("2001:cafe:42:1::/64")), ("10.42.2.0-24", None)]


def test_v6_part_unchecked_when_ipv6_disabled():
    v4_only = parse_network_config('{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}')
    leases, skipped = validate_leases(v4_only, [kv("10.42.1.0-24&2001:cafe:99:1::-80", dual_value(1, v6_vni=9))], PREFIX)
    assert [lease.key for lease in leases] == ["10.42.1.0-24&2001:cafe:99:1::-80"] and skipped == []


def test_other_keys_ignored_silently():
    kvs = [CONFIG_KV,
           RawKV("/coreos.com/network/subnetsX/10.244.1.0-24", value()),
           RawKV("/other/network/subnets/10.244.2.0-24", value()),
           RawKV("/coreos.com/network", "x"),
           RawKV("/coreos.com/network/foo", "x"),
           kv("10.244.3.0-24", value())]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.244.3.0-24"] and skipped == []


def test_prefix_trailing_slash():
    leases, _ = validate_leases(CONFIG, [kv("10.244.3.0-24", value())], PREFIX + "/")
    assert [lease.key for lease in leases] == ["10.244.3.0-24"]


def test_custom_prefix():
    kvs = [RawKV("/my/net/subnets/10.244.3.0-24", value()), kv("10.244.4.0-24", value(mac=mac_of(4)))]
    leases, _ = validate_leases(CONFIG, kvs, "/my/net")
    assert [lease.key for lease in leases] == ["10.244.3.0-24"]


def test_reservations_are_peers():
    kvs = [kv("10.244.5.0-24", value(public_ip="192.168.0.5", mac=mac_of(5)), lease=0),
           kv("10.244.6.0-24", value(public_ip="192.168.0.6", mac=mac_of(6)), lease=0x694D854330FC5110)]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert skipped == []
    assert [(lease.key, lease.is_reservation, lease.etcd_lease) for lease in leases] == [
        ("10.244.5.0-24", True, 0), ("10.244.6.0-24", False, 0x694D854330FC5110)]


# --- validate_leases: conflicts --------------------------------------------------------------------

def test_vtep_mac_conflict_oldest_wins():
    mac = "aa:bb:cc:dd:ee:01"
    kvs = [kv("10.244.1.0-24", value(public_ip="192.168.0.1", mac=mac), rev=9),
           kv("10.244.2.0-24", value(public_ip="192.168.0.2", mac=mac), rev=3)]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.244.2.0-24"]
    assert skipped == [Skipped(f"{PREFIX}/subnets/10.244.1.0-24",
                               f"conflict: VtepMAC {mac} already used by lease 10.244.2.0-24")]


def test_conflict_tie_broken_by_key():
    mac = "aa:bb:cc:dd:ee:01"
    kvs = [kv("10.244.2.0-24", value(public_ip="192.168.0.2", mac=mac), rev=4),
           kv("10.244.1.0-24", value(public_ip="192.168.0.1", mac=mac), rev=4)]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.244.1.0-24"]
    assert skipped == [Skipped(f"{PREFIX}/subnets/10.244.2.0-24",
                               f"conflict: VtepMAC {mac} already used by lease 10.244.1.0-24")]


def test_public_ip_conflict():
    kvs = [kv("10.244.1.0-24", value(public_ip="192.168.0.1", mac=mac_of(1)), rev=2),
           kv("10.244.2.0-24", value(public_ip="192.168.0.1", mac=mac_of(2)), rev=1)]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.244.2.0-24"]
    assert skipped == [Skipped(f"{PREFIX}/subnets/10.244.1.0-24",
                               "conflict: PublicIP 192.168.0.1 already used by lease 10.244.2.0-24")]


def test_same_subnet_through_the_unanchored_key():
    # flanneld's regex reads both keys as 10.244.1.0/24: two routes to one subnet.
    kvs = [kv("junk10.244.1.0-24", value(public_ip="192.168.0.2", mac=mac_of(2)), rev=1),
           kv("10.244.1.0-24", value(public_ip="192.168.0.1", mac=mac_of(1)), rev=1)]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.244.1.0-24"]
    assert skipped == [Skipped(f"{PREFIX}/subnets/junk10.244.1.0-24",
                               "conflict: subnet 10.244.1.0/24 already used by lease 10.244.1.0-24")]


def test_loser_claims_nothing():
    kvs = [kv("10.244.1.0-24", value(public_ip="192.168.0.1", mac=mac_of(1)), rev=1),
           kv("10.244.2.0-24", value(public_ip="192.168.0.2", mac=mac_of(1)), rev=2),   # loses on MAC
           kv("10.244.3.0-24", value(public_ip="192.168.0.2", mac=mac_of(3)), rev=3)]   # its IP is free
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.244.1.0-24", "10.244.3.0-24"]
    assert [s.key for s in skipped] == [f"{PREFIX}/subnets/10.244.2.0-24"]


def test_v6_conflicts():
    a = value(public_ip="10.0.0.1", mac=mac_of(1), PublicIPv6="fd00::1", BackendV6Data={"VNI": 1, "VtepMAC": mac_of(9)})
    b = value(public_ip="10.0.0.2", mac=mac_of(2), PublicIPv6="fd00::2", BackendV6Data={"VNI": 1, "VtepMAC": mac_of(9)})
    c = value(public_ip="10.0.0.3", mac=mac_of(3), PublicIPv6="fd00::1", BackendV6Data={"VNI": 1, "VtepMAC": mac_of(8)})
    kvs = [kv("10.42.1.0-24&2001:cafe:42:1::-64", a, rev=1), kv("10.42.2.0-24&2001:cafe:42:2::-64", b, rev=2),
           kv("10.42.3.0-24&2001:cafe:42:3::-64", c, rev=3)]
    leases, skipped = validate_leases(DUAL_CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == ["10.42.1.0-24&2001:cafe:42:1::-64"]
    assert skipped == [
        Skipped(f"{PREFIX}/subnets/10.42.2.0-24&2001:cafe:42:2::-64",
                f"conflict: v6 VtepMAC {mac_of(9)} already used by lease 10.42.1.0-24&2001:cafe:42:1::-64"),
        Skipped(f"{PREFIX}/subnets/10.42.3.0-24&2001:cafe:42:3::-64",
                "conflict: PublicIPv6 fd00::1 already used by lease 10.42.1.0-24&2001:cafe:42:1::-64"),
    ]
    # With IPv6 off the v6 halves are not used, so they cannot conflict.
    v4_only = parse_network_config('{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}')
    leases, skipped = validate_leases(v4_only, kvs, PREFIX)
    assert len(leases) == 3 and skipped == []


def test_results_sorted():
    kvs = [kv(f"10.244.{i}.0-24", value(public_ip=f"192.168.0.{i}", mac=mac_of(i))) for i in (30, 4, 200, 17)]
    kvs += [kv(f"10.245.{i}.0-24", value()) for i in (9, 1)]
    leases, skipped = validate_leases(CONFIG, kvs, PREFIX)
    assert [lease.key for lease in leases] == sorted(lease.key for lease in leases)
    assert [s.key for s in skipped] == sorted(s.key for s in skipped)


@st.composite
def conflicted_kvs(draw) -> list[RawKV]:
    """A handful of leases drawing MACs, PublicIPs and revisions from small pools."""
    n = draw(st.integers(1, 12))
    ids = draw(st.lists(st.integers(1, 254), min_size=n, max_size=n, unique=True))
    out = []
    for i in ids:
        mac = mac_of(draw(st.integers(0, 3)))
        ip = f"192.168.0.{draw(st.integers(1, 4))}"
        out.append(kv(f"10.244.{i}.0-24", value(public_ip=ip, mac=mac), rev=draw(st.integers(0, 3))))
    if draw(st.booleans()):
        out.append(kv("10.245.0.0-24", value()))          # a misfit among them
    return out


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kvs=conflicted_kvs())
def test_conflict_winner_independent_of_order(data, kvs):
    baseline = validate_leases(CONFIG, kvs, PREFIX)
    shuffled = data.draw(st.permutations(kvs))
    assert validate_leases(CONFIG, shuffled, PREFIX) == baseline

    leases, skipped = baseline
    assert len(leases) + len(skipped) == len(kvs)          # every key accounted for, once
    for attr in ("vtep_mac", "public_ip", "subnet"):
        assert len({getattr(lease, attr) for lease in leases}) == len(leases)
    rank = {k.key: (k.mod_revision, k.key) for k in kvs}
    for s in skipped:
        if s.reason.startswith("conflict:"):
            winner = f"{PREFIX}/subnets/" + s.reason.rsplit(" ", 1)[1]
            assert rank[winner] < rank[s.key]                # the older lease won


def test_five_thousand_leases_with_mac_conflicts():
    """Correct at scale; how fast is ``benchmarks/bench_core.py``'s (a ratio between sizes)."""
    kvs = [kv(f"10.{i >> 8}.{i & 0xFF}.0-24", value(public_ip=f"172.16.{i >> 8}.{i & 0xFF}", mac=mac_of(i)),
              rev=i) for i in range(1, 5001)]
    # 50 newcomers duplicating established MACs.
    kvs += [kv(f"10.100.{i}.0-24", value(public_ip=f"172.31.0.{i + 1}", mac=mac_of(i + 1)), rev=10_000 + i)
            for i in range(50)]
    big = parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    leases, skipped = validate_leases(big, reversed(kvs), PREFIX)
    assert len(leases) == 5000 and len(skipped) == 50
    assert all(s.reason.startswith("conflict: VtepMAC") for s in skipped)


# --- snapshot files -------------------------------------------------------------------------

SNAPSHOT = {
    "prefix": "/coreos.com/network/",
    "revision": 42,
    "kvs": [
        {"key": "/coreos.com/network/config", "value": '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'},
        {"key": "/coreos.com/network/subnets/10.244.1.0-24", "value": RES_VALUE, "lease": 7, "mod_revision": 40},
        {"key": "/coreos.com/network/subnets/10.244.2.0-24", "value": "not json", "create_revision": 3},
    ],
}


def test_parse_snapshot():
    snap = parse_snapshot(json.dumps(SNAPSHOT))
    assert snap == LeaseSnapshot(prefix="/coreos.com/network", revision=42, kvs=(
        RawKV("/coreos.com/network/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}', 0, 0),
        RawKV("/coreos.com/network/subnets/10.244.1.0-24", RES_VALUE, 7, 40),
        RawKV("/coreos.com/network/subnets/10.244.2.0-24", "not json", 0, 0),
    ))
    leases, skipped = validate_leases(CONFIG, snap.kvs, snap.prefix)
    assert [lease.key for lease in leases] == ["10.244.1.0-24"]
    assert [s.key for s in skipped] == ["/coreos.com/network/subnets/10.244.2.0-24"]


def test_snapshot_round_trip_and_stable_bytes():
    snap = parse_snapshot(json.dumps(SNAPSHOT))
    text = snapshot_to_json(snap)
    assert parse_snapshot(text) == snap
    assert text.endswith("}\n")
    reordered = dataclasses.replace(snap, kvs=tuple(reversed(snap.kvs)))
    assert snapshot_to_json(reordered) == text
    assert json.loads(text)["kvs"][1] == {"key": "/coreos.com/network/subnets/10.244.1.0-24",
                                          "value": RES_VALUE, "lease": 7, "mod_revision": 40}


def test_example_snapshot_file_validates():
    path = Path(__file__).resolve().parent.parent / "reconciler" / "examples" / "cluster-3-nodes.json"
    if path.exists():  # shipped by the CLI work; the parser must read it
        snap = parse_snapshot(path.read_text())
        config_kv = next(k for k in snap.kvs if k.key == snap.prefix + "/config")
        leases, skipped = validate_leases(parse_network_config(config_kv.value), snap.kvs, snap.prefix)
        assert leases and skipped == []


def _broken(mutate) -> str:
    doc = json.loads(json.dumps(SNAPSHOT))
    mutate(doc)
    return json.dumps(doc)


@pytest.mark.parametrize("text, fragment", [
    ("", "not valid JSON"),
    ("[]", "must be a JSON object"),
    (_broken(lambda d: d.pop("prefix")), "'prefix'"),
    (_broken(lambda d: d.update(prefix="")), "'prefix'"),
    (_broken(lambda d: d.update(prefix=5)), "'prefix'"),
    (_broken(lambda d: d.pop("revision")), "'revision'"),
    (_broken(lambda d: d.update(revision=-1)), "'revision'"),
    (_broken(lambda d: d.update(revision=True)), "'revision'"),
    (_broken(lambda d: d.update(revision="42")), "'revision'"),
    (_broken(lambda d: d.pop("kvs")), "'kvs'"),
    (_broken(lambda d: d.update(kvs={})), "'kvs'"),
    (_broken(lambda d: d["kvs"].__setitem__(1, "x")), "kvs[1]: must be an object"),
    (_broken(lambda d: d["kvs"][1].pop("key")), "kvs[1]: 'key'"),
    (_broken(lambda d: d["kvs"][2].pop("value")), "kvs[2]: 'value'"),
    (_broken(lambda d: d["kvs"][1].update(value=json.loads(RES_VALUE))), "kvs[1]: 'value' must be a string"),
    (_broken(lambda d: d["kvs"][1].update(lease=-7)), "kvs[1]: 'lease'"),
    (_broken(lambda d: d["kvs"][1].update(lease="7")), "kvs[1]: 'lease'"),
    (_broken(lambda d: d["kvs"][1].update(mod_revision=1.5)), "kvs[1]: 'mod_revision'"),
    (_broken(lambda d: d["kvs"][2].update(key=d["kvs"][1]["key"])), "kvs[2]: duplicate key"),
])
def test_malformed_snapshot(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_snapshot(text)
    assert fragment in str(info.value), str(info.value)


# --- purity -------------------------------------------------------------------------------------

def test_no_kernel_or_etcd_imports():
    code = ("import sys, reconciler.core.config, reconciler.core.leases\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'grpc', 'pyetcd', 'etcd3', 'etcd')\n"
            "       or m.startswith('reconciler.kernel.netlink')]\n"
            "assert not bad, bad\n")
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
