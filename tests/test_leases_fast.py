"""The compiled lease parser (``_fastpath/_leases.pyx``) against the pure one, the specification.

``parse_canonical`` may only say "not mine" (None) or give exactly the pure parser's ``Lease``; and
``parse_lease``, which tries it first, must equal ``parse_lease_pure`` on everything, errors
included.  Canonical values (flanneld's own bytes) must take the fast path, or it buys nothing.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _fastpath
from reconciler.core import leases as leases_mod
from reconciler.core.errors import LeaseError
from reconciler.core.leases import encode_lease_value, parse_lease, parse_lease_pure
from tests.conftest_fastpath import every_field, require_fastpath


@pytest.fixture(autouse=True)
def built():
    require_fastpath()
    assert _fastpath.parse_canonical is not None


def _outcome(fn, key, value, lease=0):
    try:
        return ("ok", fn(key, value, lease))
    except LeaseError as exc:
        return ("error", str(exc))


octet = st.integers(0, 255)
macs = st.binary(min_size=6, max_size=6)


@st.composite
def canonical(draw):
    plen = draw(st.integers(0, 31))
    net = draw(st.integers(0, (1 << 32) - 1)) >> (32 - plen) << (32 - plen)
    key = ".".join(str(net >> s & 255) for s in (24, 16, 8, 0)) + f"-{plen}"
    first = draw(st.sampled_from([1, 10, 100, 172, 192, 198, 223]))
    ip = f"{first}.{draw(octet)}.{draw(octet)}.{draw(octet)}"
    mac = bytearray(draw(macs))
    mac[0] &= 0xFE
    mac[5] |= 1
    text = draw(st.sampled_from([":".join(f"{b:02x}" for b in mac), ":".join(f"{b:02X}" for b in mac)]))
    value = encode_lease_value(ip, text.lower(), draw(st.integers(0, (1 << 32) - 1)))
    if text != text.lower():
        value = value.replace(text.lower(), text)      # Go writes lower case; a hand-made upper-case MAC parses too
    return key, value


@settings(max_examples=500, deadline=None)
@given(canonical(), st.integers(0, 1 << 62))
def test_flanneld_values_take_the_fast_path_and_equal_the_pure_parser(case, lease):
    key, value = case
    fast = _fastpath.parse_canonical(key, value, lease)
    assert fast is not None, (key, value)
    pure = parse_lease_pure(key, value, lease)
    assert fast == pure
    # Field by field, types included: the fast Lease is built from C, not by its __init__.
    assert every_field([fast]) == every_field([pure])


def test_the_fast_lease_is_built_without_its_init_while_the_class_allows():
    from _fastpath import _leases

    assert _leases.BUILT_DIRECTLY       # Lease is a slotted dataclass with these fields


def _mutate(draw, text: str) -> str:
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        ch = draw(st.sampled_from(list('0123456789.:-"{},abcdefABCDEF xX\\\u00e9\u0660 ')))
        if op == "replace" and i < len(text):
            text = text[:i] + ch + text[i + 1:]
        elif op == "insert":
            text = text[:i] + ch + text[i:]
        elif i < len(text):
            text = text[:i] + text[i + 1:]
    return text


@st.composite
def hostile(draw):
    key, value = draw(canonical())
    which = draw(st.sampled_from(["key", "value", "both", "text"]))
    if which in ("key", "both"):
        key = _mutate(draw, key)
    if which in ("value", "both"):
        value = _mutate(draw, value)
    if which == "text":
        value = draw(st.text(max_size=200))
    return key, value


@settings(max_examples=2000, deadline=None)
@given(hostile())
def test_on_hostile_input_the_fast_path_declines_or_agrees(case):
    key, value = case
    fast = _fastpath.parse_canonical(key, value, 7)
    pure = _outcome(parse_lease_pure, key, value, 7)
    if fast is not None:
        assert pure == ("ok", fast), (key, value)
    assert _outcome(parse_lease, key, value, 7) == pure


_V = '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'


@pytest.mark.parametrize("key, value", [
    # A /0 with host bits: the alignment check must hold for every prefix length (a 32-bit shift
    # by 32 is undefined in C; found by the hostile-input property).
    ("0.0.112.0-0", _V.replace("198.18.0.1", "1.0.0.0")),
    ("100.64.1.0-24", '{"PublicIP":"127.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("100.64.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:58:64:40:01:00"}}'),
    ("100.64.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}}'),
    ("100.64.1.0-24", '{"PublicIP":"198.18.0.01","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("100.64.1.0-24", _V.replace('"VNI":1', '"VNI":4294967296')),
    ("100.64.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":01,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("100.64.1.5-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("100.64.1.0-32", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("x100.64.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("100.64.1.0-24", _V[:-1] + ',"PublicIP":"198.18.0.2"}'),
    ("100.64.1.0-24", '{"publicip":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:64:40:01:00"}}'),
    ("100.64.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"udp","BackendData":null}'),
])
def test_edge_cases_go_to_the_pure_parser(key, value):
    assert _fastpath.parse_canonical(key, value, 1) is None
    assert _outcome(parse_lease, key, value, 1) == _outcome(parse_lease_pure, key, value, 1)


def test_the_dispatcher_uses_the_pure_parser_when_the_fast_one_is_off(monkeypatch):
    value = encode_lease_value("198.18.0.1", "0a:58:64:40:01:00", 1)
    calls = []
    monkeypatch.setattr(leases_mod, "_FAST", lambda *a: calls.append(a))
    assert parse_lease("100.64.1.0-24", value) == parse_lease_pure("100.64.1.0-24", value) and len(calls) == 1
    monkeypatch.setattr(leases_mod, "_FAST", None)
    assert parse_lease("100.64.1.0-24", value) == parse_lease_pure("100.64.1.0-24", value)
