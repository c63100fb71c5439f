"""Start-up: what the agent waits for and picks before its first cycle.

``Agent.start`` runs these in order: wait for the network config in etcd (as
flanneld, every second), find the underlay, choose the VTEP MAC(s), acquire
our lease (``acquire.py``) and list the leases.  Each etcd step waits for
etcd like flanneld does, with a capped backoff, instead of exiting: nothing
in the kernel is touched meanwhile.  Only a wrong certificate or password
ends the start-up, since retrying cannot help.
"""
from __future__ import annotations

import logging
import os
import random
import threading
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

from reconciler.core.config import NetworkConfig, parse_network_config, require_ipv4, require_vxlan
from reconciler.core.errors import EtcdAuthError, EtcdError, ReconcilerError
from reconciler.core.leases import Lease
from reconciler.kernel.netlink.common import UnderlaySpec

if TYPE_CHECKING:  # the store is only called here
    from reconciler.etcd.store import EtcdStore

__all__ = ["choose_v6_vtep_mac", "choose_vtep_mac", "netns_inode", "random_vtep_mac", "retry_etcd",
           "underlay_spec", "wait_for_config"]

log = logging.getLogger("flannel_reconciler")

T = TypeVar("T")


def random_vtep_mac(rng: random.Random) -> str:
    """flanneld's choice: 6 random bytes, locally administered, unicast."""
    b = bytearray(rng.getrandbits(8) for _ in range(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def underlay_spec(opts) -> UnderlaySpec:
    """Which interface the options pick as the underlay (--iface, --iface-regex, --iface-can-reach)."""
    iface = opts.iface
    ifaces = (iface,) if isinstance(iface, str) else tuple(iface or ())
    return UnderlaySpec(ifaces=ifaces, regexes=tuple(opts.iface_regex),
                        can_reach=opts.iface_can_reach, public_ip=opts.public_ip)


def retry_etcd(what: str, fn: Callable[[], T], stop: threading.Event, set_etcd_ok: Callable[[bool], None]) -> T:
    """Start-up steps wait for etcd like flanneld does, with a capped backoff,
    instead of exiting: nothing in the kernel is touched meanwhile."""
    delay = 1.0
    while True:
        try:
            return fn()
        except EtcdAuthError:
            raise
        except EtcdError as exc:
            set_etcd_ok(False)
            log.warning("cannot %s: %s; retrying in %.0fs", what, exc, delay)
        if stop.wait(delay):
            raise ReconcilerError(f"stopped before we could {what}")
        delay = min(delay * 2, 30.0)


def wait_for_config(store: EtcdStore, stop: threading.Event, set_etcd_ok: Callable[[bool], None]) -> NetworkConfig:
    # flanneld retries every second until the config exists.
    warned = False
    while not stop.is_set():
        try:
            raw = store.get_config()
        except EtcdAuthError:
            raise  # wrong certificate or password: retrying cannot help, say so and exit
        except EtcdError as exc:
            raw = None
            set_etcd_ok(False)
            log.warning("etcd: %s; retrying", exc)
        if raw is not None:
            cfg = parse_network_config(raw)
            require_vxlan(cfg)
            require_ipv4(cfg)
            set_etcd_ok(True)
            return cfg
        if not warned:
            log.warning("no network config at %s/config yet; waiting", store.prefix)
            warned = True
        stop.wait(1.0)
    raise ReconcilerError("stopped before the network config appeared")


def choose_vtep_mac(backend, config: NetworkConfig, public_ip: str, leases: Iterable[Lease],
                    rng: random.Random) -> str:
    """Keep the MAC peers already know: the live device's, else our lease's, else a new one.

    flanneld picks a fresh random MAC whenever it creates the device, and
    every peer's permanent neighbour entry goes stale (flannel #1795,
    #1330); reusing the advertised MAC avoids that churn altogether.
    ``leases``: every lease that parses (whatever the config), in key order.
    """
    return _known_mac(backend, public_ip, leases, config.device_name, lambda lease: lease.vtep_mac, rng)


def choose_v6_vtep_mac(backend, config: NetworkConfig, public_ip: str, leases: Iterable[Lease],
                       rng: random.Random) -> str:
    """``choose_vtep_mac`` for ``flannel-v6.<VNI>``: its live MAC, else our
    lease's BackendV6Data.VtepMAC, else a new random one."""
    return _known_mac(backend, public_ip, leases, config.v6_device_name, lambda lease: lease.v6_vtep_mac, rng)


def _known_mac(backend, public_ip: str, leases: Iterable[Lease], dev: str,
               mac_of: Callable[[Lease], str | None], rng: random.Random) -> str:
    live = backend.dump([dev]).get("link", dev)
    if live is not None and live.type == "vxlan" and live.mac:
        return live.mac
    for lease in leases:
        mac = mac_of(lease)
        if lease.public_ip == public_ip and mac:
            return mac
    return random_vtep_mac(rng)


def netns_inode(name: str | None, missing_ok: bool = False) -> int | None:
    """The inode of ``/var/run/netns/NAME`` (None: no namespace given, or gone when ``missing_ok``)."""
    if name is None:
        return None
    from reconciler.kernel.netlink.common import NETNS_RUN_DIR

    try:
        return os.stat(os.path.join(NETNS_RUN_DIR, name)).st_ino
    except OSError:
        if missing_ok:
            return None
        raise
