"""``/run/flannel/subnet.env``: what the flannel CNI plugin reads.

Format and order are flanneld's ``WriteSubnetFile`` (docs/flannel-formats.md section 5.1);
the file is replaced atomically with mode 0644 whatever the umask, so the CNI
plugin never reads half a file and can always read it.
"""
from __future__ import annotations

import ipaddress
import os
import tempfile
from ipaddress import IPv4Network, IPv6Network

from reconciler.core.config import NetworkConfig

__all__ = ["VXLAN_OVERHEAD", "read_previous_ipv6_subnet", "read_previous_subnet", "read_subnet_env",
           "render_subnet_env", "write_subnet_env"]

#: Bytes the VXLAN encapsulation adds; flanneld's device MTU is the underlay MTU minus this.
VXLAN_OVERHEAD = 50

_FILE_MODE = 0o644
_DIR_MODE = 0o755


def render_subnet_env(config: NetworkConfig, subnet: IPv4Network, mtu: int, ipmasq: bool = False,
                      ipv6_subnet: IPv6Network | None = None) -> str:
    """The file's text, byte for byte as flanneld writes it.

    ``mtu`` is the *underlay* MTU (the external interface's, or Backend.MTU):
    FLANNEL_MTU is ``mtu - 50``, the flannel.<VNI> device MTU.  FLANNEL_SUBNET
    is the first host address with the subnet's prefix (``10.244.1.1/24``),
    which is the address the bridge plugin gives cni0.
    """
    device_mtu = int(mtu) - VXLAN_OVERHEAD
    if device_mtu <= 0:
        raise ValueError(f"underlay MTU {mtu} leaves no room for VXLAN's {VXLAN_OVERHEAD}-byte overhead")
    lines = []
    if config.enable_ipv4:
        if config.network is None:
            raise ValueError("IPv4 is enabled but the config has no Network")
        lines.append(f"FLANNEL_NETWORK={config.network}")
        lines.append(f"FLANNEL_SUBNET={_first_host(subnet)}")
    if config.enable_ipv6:
        if config.ipv6_network is None or ipv6_subnet is None:
            raise ValueError("IPv6 is enabled: the IPv6 network and this node's IPv6 subnet are both needed")
        lines.append(f"FLANNEL_IPV6_NETWORK={config.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={_first_host(ipv6_subnet)}")
    lines.append(f"FLANNEL_MTU={device_mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}")  # Go's %v of a bool
    return "".join(line + "\n" for line in lines)


def _first_host(net: IPv4Network | IPv6Network) -> str:
    # flanneld's IncrementIP on the network address, printed with the prefix;
    # ipaddress prints IPv6 in RFC 5952 form, as Go does.
    return f"{net.network_address + 1}/{net.prefixlen}"


def write_subnet_env(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically: a temp file in the same directory, fsync,
    rename, fsync of the directory.  Mode 0644 regardless of the umask;
    missing parent directories are created 0755."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    _makedirs(parent)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp makes 0600; chmod is not subject to the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename itself must survive a crash, or the old file comes back.
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _makedirs(directory: str) -> None:
    """``mkdir -p`` with 0755 for the directories it creates (``makedirs``'s
    mode is masked by the umask; an existing directory is left as it is)."""
    missing = []
    d = directory
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, _DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, _DIR_MODE)


def read_subnet_env(path: str | os.PathLike[str]) -> dict[str, str]:
    """``KEY=VALUE`` lines, as godotenv reads flanneld's file (comments, blank
    lines, ``export`` and quotes tolerated).  A missing or unreadable file is {}."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        out[key] = value
    return out


def read_previous_subnet(path: str | os.PathLike[str]) -> IPv4Network | None:
    """FLANNEL_SUBNET from a previous run, masked (``10.244.1.1/24`` ->
    ``10.244.1.0/24``), as flanneld's ``--subnet-file`` read-back.  A missing
    file, a missing key or a garbled value is None: then there is no previous
    subnet, which is never an error."""
    value = read_subnet_env(path).get("FLANNEL_SUBNET")
    if not value or "/" not in value:
        return None
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, IPv4Network) else None


def read_previous_ipv6_subnet(path: str | os.PathLike[str]) -> IPv6Network | None:
    """FLANNEL_IPV6_SUBNET from a previous run, masked (``fd00:100:64:1::1/64`` ->
    ``fd00:100:64:1::/64``), as flanneld's ``ReadIP6CIDRFromSubnetFile``.
    Missing or garbled (or more than one, comma-separated, as flanneld also
    refuses) is None."""
    value = read_subnet_env(path).get("FLANNEL_IPV6_SUBNET")
    if not value or "/" not in value or "," in value:
        return None
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, IPv6Network) else None
