"""The command line's inputs, shared by ``main.py`` (``plan``, ``apply``, ``show``) and
``agent.py`` (``run``, ``snapshot``): the lease source, the kernel backend, and the node's
underlay, bridge and public addresses as the flags give them (``flags.py`` defines the flags)."""
from __future__ import annotations

from pathlib import Path

from reconciler.cli import flags
from reconciler.core.errors import ReconcilerError
from reconciler.core.leases import LeaseSnapshot, parse_snapshot
from reconciler.core.ownership import BRIDGE_NAME
from reconciler.kernel.netlink.common import UnderlaySpec, compile_iface_regex

__all__ = ["bridge_name", "check_underlay_address", "first_iface", "load_snapshot", "open_backend", "open_store",
           "public_ipv6", "read_input_file", "underlay_spec"]


def read_input_file(flag: str, path: str) -> str:
    """A JSON input file's text; binary content is refused naming the flag."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ReconcilerError(f"cannot read {flag} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReconcilerError(f"{flag} {path}: not UTF-8 text (byte {exc.start}): a JSON file is expected") from None


def load_snapshot(args) -> LeaseSnapshot:
    if args.leases_file:
        text = read_input_file("--leases-file", args.leases_file)
        try:
            return parse_snapshot(text)
        except ValueError as exc:
            raise ReconcilerError(f"--leases-file {args.leases_file}: {exc}") from None
    with open_store(args) as store:
        return store.snapshot()


def open_store(args):
    from reconciler.etcd.store import EtcdStore

    return EtcdStore(
        list(args.etcd_endpoints),
        prefix=args.etcd_prefix,
        ca_file=args.etcd_cafile,
        cert_file=args.etcd_certfile,
        key_file=args.etcd_keyfile,
        username=args.etcd_username,
        password=args.etcd_password,
        timeout=args.etcd_timeout,
    )


def open_backend(args):
    kind = getattr(args, "netlink_backend", "batched")   # checked by flags.py, the variable too
    if kind == "batched":
        from reconciler.kernel.netlink.batched import BatchedBackend

        return BatchedBackend(netns=args.netns)
    from reconciler.kernel.netlink.reference import PyrouteBackend

    return PyrouteBackend(netns=args.netns)


def underlay_spec(args) -> UnderlaySpec:
    """flanneld's interface flags as one ``UnderlaySpec`` (their ``FLANNELD_*`` variables: ``flags.py``)."""
    ifaces = tuple(args.iface or ())
    regexes = tuple(getattr(args, "iface_regex", None) or ())
    for pattern in regexes:
        compile_iface_regex(pattern)            # a bad pattern is refused before anything is read
    return UnderlaySpec(ifaces=tuple(ifaces), regexes=tuple(regexes),
                        can_reach=getattr(args, "iface_can_reach", None) or None, public_ip=args.public_ip)


def bridge_name(args) -> str | None:
    """The pod bridge we manage, or None (``--no-bridge``: the CNI plugin's)."""
    if getattr(args, "no_bridge", False):
        return None
    name = getattr(args, "bridge", None) or BRIDGE_NAME
    if len(name) > 15 or "/" in name or not name.strip() or name in (".", ".."):
        raise ReconcilerError(f"--bridge {name!r}: not a valid interface name (at most 15 characters, no '/')")
    return name


def first_iface(args) -> str | None:
    """The underlay named by ``--iface``: the first one given (flanneld tries them in order)."""
    return args.iface[0] if args.iface else None


def check_underlay_address(args, underlay) -> str:
    """The PublicIP: ``--public-ip``, else the underlay's address, which must be one peers can reach."""
    if args.public_ip:
        return args.public_ip
    try:
        return flags.public_ipv4(underlay.address)
    except ValueError as exc:
        named = f"--iface {first_iface(args)}" if args.iface else f"the default-route interface {underlay.name}"
        raise ReconcilerError(f"{named}: its address {underlay.address} is {exc}; "
                              "name the underlay interface with --iface or give --public-ip") from None


def public_ipv6(args) -> str | None:
    """``--public-ipv6`` in Go's text form; a value that is not a unicast IPv6 address is refused."""
    value = getattr(args, "public_ipv6", None)
    if not value:
        return None
    from reconciler.core.leases import _usable_ipv6  # the lease encoder's own check: what it would not write, we refuse

    try:
        return _usable_ipv6(value)
    except ValueError as exc:
        raise ReconcilerError(f"--public-ipv6: {exc}") from None
