"""The command line's inputs, shared by ``main.py`` (``plan``, ``apply``, ``show``) and
``agent.py`` (``run``, ``snapshot``): the lease source, the kernel backend, and the node's
underlay, bridge and public addresses as the flags give them (``flags.py`` defines the flags)."""
from __future__ import annotations


from reconciler.cli import flags
from reconciler.core.config import NetworkConfig, parse_network_config, require_ipv4, require_vxlan
from reconciler.core.desired import NodeParams, underlay_mtu
from reconciler.core.errors import ConfigError, ReconcilerError
from reconciler.core.leases import LeaseSnapshot, parse_snapshot
from reconciler.core.ownership import BRIDGE_NAME
from reconciler.kernel.netlink.common import UnderlaySpec, compile_iface_regex

__all__ = ["bridge_name", "check_underlay_address", "config_from_snapshot", "first_iface", "load_snapshot",
           "node_params", "open_backend", "open_store", "public_ipv6", "read_input_file", "underlay_spec"]


#: The largest input file read: a 20,000-node snapshot is a few MiB, and a
#: device such as /dev/zero or /dev/urandom would otherwise be read forever.
MAX_INPUT_BYTES = 64 * 1024 * 1024


def read_input_file(flag: str, path: str) -> str:
    """A JSON input file's text; binary content is refused naming the flag."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise ReconcilerError(f"cannot read {flag} {path}: {exc.strerror}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise ReconcilerError(f"{flag} {path}: larger than {MAX_INPUT_BYTES >> 20} MiB: not a snapshot or "
                              "live state (a device such as /dev/zero?)")
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


def config_from_snapshot(snap: LeaseSnapshot) -> NetworkConfig:
    key = snap.prefix.rstrip("/") + "/config"
    for kv in snap.kvs:
        if kv.key == key:
            cfg = parse_network_config(kv.value)
            require_vxlan(cfg)
            require_ipv4(cfg)
            return cfg
    raise ConfigError(key, "not found (did you create the config with the etcd v3 API?)")


def _is_ip(s: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def node_params(args, config: NetworkConfig, backend=None) -> tuple[NodeParams, tuple[str, ...]]:
    """This node's parameters and the underlay's connected prefixes.

    MTU: see ``desired.underlay_mtu``.
    """
    underlay = None
    spec = underlay_spec(args)
    if backend is not None:
        underlay = backend.underlay(spec)
    public_ip = check_underlay_address(args, underlay) if underlay else args.public_ip
    if not public_ip:
        raise ReconcilerError("--public-ip is required when the kernel is not read (offline plan)")
    public_ipv6_value = public_ipv6(args)
    if underlay is not None and config.enable_ipv6:
        underlay = backend.underlay_v6(underlay, public_ipv6_value)
        public_ipv6_value = public_ipv6_value or underlay.address6
    mtu = underlay_mtu(args.underlay_mtu, config.mtu, (underlay.name, underlay.mtu) if underlay else None)
    if underlay is not None:
        name = underlay.name
    elif len(spec.ifaces) == 1 and not spec.regexes and not spec.can_reach and not _is_ip(spec.ifaces[0]):
        name = spec.ifaces[0]
    else:
        name = None
    params = NodeParams(public_ip=public_ip, underlay_mtu=mtu, underlay=name, bridge=bridge_name(args),
                        public_ipv6=public_ipv6_value if config.enable_ipv6 else None,
                        route_layout=getattr(args, "route_layout", "onlink"),
                        blackhole=getattr(args, "ip_blackhole_route", False))
    return params, ((underlay.prefixes + underlay.prefixes6) if underlay else ())
