"""subnet.env: flanneld's exact bytes, atomic replacement, read-back."""
from __future__ import annotations

import os
import stat
import threading
from ipaddress import IPv4Network, IPv6Network

import pytest

from reconciler.core.config import parse_network_config
from reconciler.agent.subnet_env import read_previous_subnet, read_subnet_env, render_subnet_env, write_subnet_env

V4 = parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL = parse_network_config('{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56",'
                            '"Backend":{"Type":"vxlan"}}')


def test_render_ipv4_exact_bytes():
    text = render_subnet_env(V4, IPv4Network("10.244.1.0/24"), 1500)
    assert text == ("FLANNEL_NETWORK=10.244.0.0/16\n"
                    "FLANNEL_SUBNET=10.244.1.1/24\n"
                    "FLANNEL_MTU=1450\n"
                    "FLANNEL_IPMASQ=false\n")


def test_render_ipmasq_and_jumbo_mtu():
    text = render_subnet_env(V4, IPv4Network("10.244.255.0/24"), 9000, ipmasq=True)
    assert text.splitlines() == ["FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_SUBNET=10.244.255.1/24",
                                 "FLANNEL_MTU=8950", "FLANNEL_IPMASQ=true"]


def test_render_dual_stack_order_and_go_ipv6_form():
    text = render_subnet_env(DUAL, IPv4Network("10.244.3.0/24"), 1500,
                             ipv6_subnet=IPv6Network("2001:cafe:42:3::/64"))
    assert text == ("FLANNEL_NETWORK=10.244.0.0/16\n"
                    "FLANNEL_SUBNET=10.244.3.1/24\n"
                    "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
                    "FLANNEL_IPV6_SUBNET=2001:cafe:42:3::1/64\n"
                    "FLANNEL_MTU=1450\n"
                    "FLANNEL_IPMASQ=false\n")


def test_render_refuses_missing_ipv6_subnet_and_tiny_mtu():
    with pytest.raises(ValueError):
        render_subnet_env(DUAL, IPv4Network("10.244.3.0/24"), 1500)
    with pytest.raises(ValueError):
        render_subnet_env(V4, IPv4Network("10.244.3.0/24"), 50)


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_write_is_0644_under_umask_077_and_creates_parents_0755(tmp_path, umask_077):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    text = render_subnet_env(V4, IPv4Network("10.244.1.0/24"), 1500)
    write_subnet_env(path, text)
    assert path.read_bytes() == text.encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / "flannel").stat().st_mode) == 0o755
    assert os.listdir(path.parent) == ["subnet.env"]  # no temp file left behind


def test_write_leaves_an_existing_parent_alone(tmp_path, umask_077):
    parent = tmp_path / "mine"
    parent.mkdir(mode=0o700)
    write_subnet_env(parent / "subnet.env", "FLANNEL_MTU=1450\n")
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700


def test_write_replaces_atomically(tmp_path):
    """A concurrent reader sees the old file or the new one, never a mix or nothing."""
    path = tmp_path / "subnet.env"
    a = render_subnet_env(V4, IPv4Network("10.244.1.0/24"), 1500)
    b = render_subnet_env(V4, IPv4Network("10.244.2.0/24"), 9000, ipmasq=True) * 50  # larger than a
    write_subnet_env(path, a)
    seen: set[str] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            write_subnet_env(path, a if i % 2 else b)
    finally:
        done.set()
        t.join()
    assert seen <= {a, b}
    assert sorted(os.listdir(tmp_path)) == ["subnet.env"]


def test_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "subnet.env"
    write_subnet_env(path, "FLANNEL_MTU=1450\n")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_subnet_env(path, "FLANNEL_MTU=1\n")
    assert path.read_text() == "FLANNEL_MTU=1450\n"
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_read_back_round_trip(tmp_path):
    path = tmp_path / "subnet.env"
    write_subnet_env(path, render_subnet_env(V4, IPv4Network("10.244.7.0/24"), 1500, ipmasq=True))
    assert read_previous_subnet(path) == IPv4Network("10.244.7.0/24")
    env = read_subnet_env(path)
    assert env == {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.7.1/24",
                   "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}


@pytest.mark.parametrize("content, expected", [
    ("FLANNEL_SUBNET=10.244.1.1/24\n", IPv4Network("10.244.1.0/24")),        # masked, like flanneld
    ('export FLANNEL_SUBNET="10.244.9.1/24"\n', IPv4Network("10.244.9.0/24")),  # godotenv forms
    ("# comment\n\nFLANNEL_SUBNET=10.244.2.1/24 # trailing\n", IPv4Network("10.244.2.0/24")),
    ("FLANNEL_SUBNET=garbage\n", None),
    ("FLANNEL_SUBNET=10.244.1.1\n", None),            # no prefix: flanneld's ParseCIDR fails too
    ("FLANNEL_SUBNET=fc00::1/64\n", None),            # not IPv4
    ("FLANNEL_NETWORK=10.244.0.0/16\n", None),        # key missing
    ("\x00\xff binary junk", None),
])
def test_read_previous_subnet_tolerates_anything(tmp_path, content, expected):
    path = tmp_path / "subnet.env"
    path.write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    assert read_previous_subnet(path) == expected


def test_read_previous_subnet_missing_file(tmp_path):
    assert read_previous_subnet(tmp_path / "nope" / "subnet.env") is None
