"""The real CNI ``bridge`` plugin, configured exactly as flannel's CNI plugin configures it.

On a flannel node the container runtime calls the ``flannel`` CNI plugin,
which reads ``/run/flannel/subnet.env`` and *delegates* to the ``bridge``
plugin with a config it builds (docs/flannel-formats.md section 5.2).
Here we skip the flannel plugin and build that delegate config ourselves,
then run ``/usr/lib/cni/bridge`` inside the node's namespace, as the runtime
would run it on the node::

    conf = flannel_delegate_config(subnet_env_text, data_dir=tmp)
    result = cni_add(node_ns, pod_ns, "pod-1", conf)     # veth in cni0, address, routes
    cni_del(node_ns, pod_ns, "pod-1", conf)

The plugin adopts a ``cni0`` that already carries the gateway address (the
one the agent makes), so these are the pods a real flannel node would get.
host-local keeps its allocations under ``ipam.dataDir`` (a directory the
caller owns), so nothing is left in ``/var/lib/cni``.
"""
from __future__ import annotations

import ipaddress
import json
import os
from typing import Any, Mapping

from reconciler.tools.lab.netns import NETNS_DIR, run

__all__ = [
    "CNI_PATH",
    "CNI_VERSION",
    "CniError",
    "STOCK_DELEGATE",
    "cni_add",
    "cni_del",
    "flannel_delegate_config",
    "parse_subnet_env",
]

#: Where Debian's containernetworking-plugins puts the plugins.
CNI_PATH = "/usr/lib/cni"
#: kube-flannel's stock conflist version.
CNI_VERSION = "0.3.1"
#: The delegate of kube-flannel's stock conflist (``kube-flannel.yml``'s ``cni-conf.json``).
STOCK_DELEGATE: Mapping[str, Any] = {"hairpinMode": True, "isDefaultGateway": True}
#: The bridge plugin's default bridge name, which flannel relies on.
BRIDGE = "cni0"


class CniError(RuntimeError):
    """A plugin call failed; carries the plugin's JSON error (``code``, ``msg``, ``details``)."""

    def __init__(self, message: str, code: int | None = None, msg: str = "", details: str = "") -> None:
        super().__init__(message)
        self.code, self.msg, self.details = code, msg, details


def parse_subnet_env(text: str) -> dict[str, Any]:
    """``subnet.env`` as the flannel CNI plugin reads it (``loadFlannelSubnetEnv``).

    Plain ``KEY=VALUE`` lines split at the first ``=`` (not godotenv: the
    plugin does no quoting or comments).  Returns ``networks`` (a list:
    FLANNEL_NETWORK may be comma-separated), ``subnet`` (FLANNEL_SUBNET in
    network form: ``10.244.1.1/24`` gives ``10.244.1.0/24``), the same two
    for IPv6 when present, ``mtu`` and ``ipmasq`` (true only for ``true``).
    Raises ``ValueError`` naming what is missing, as the plugin does.
    """
    out: dict[str, Any] = {"networks": [], "subnet": None, "ipv6_networks": [], "ipv6_subnet": None,
                           "mtu": None, "ipmasq": None}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "FLANNEL_NETWORK":
            out["networks"] = [str(ipaddress.ip_network(v, strict=False)) for v in value.split(",")]
        elif key == "FLANNEL_IPV6_NETWORK":
            out["ipv6_networks"] = [str(ipaddress.ip_network(v, strict=False)) for v in value.split(",")]
        elif key == "FLANNEL_SUBNET":
            out["subnet"] = str(ipaddress.ip_network(value, strict=False))
        elif key == "FLANNEL_IPV6_SUBNET":
            out["ipv6_subnet"] = str(ipaddress.ip_network(value, strict=False))
        elif key == "FLANNEL_MTU":
            out["mtu"] = int(value)
        elif key == "FLANNEL_IPMASQ":
            out["ipmasq"] = value == "true"
    if not out["networks"] and not out["ipv6_networks"]:
        raise ValueError("subnet.env: FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK) is missing")
    if out["subnet"] is None and out["ipv6_subnet"] is None:
        raise ValueError("subnet.env: FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET) is missing")
    if out["mtu"] is None:
        raise ValueError("subnet.env: FLANNEL_MTU is missing")
    if out["ipmasq"] is None:
        raise ValueError("subnet.env: FLANNEL_IPMASQ is missing")
    return out


def flannel_delegate_config(subnet_env_text: str, name: str = "cbr0", *, data_dir: str) -> dict[str, Any]:
    """The bridge delegate config flannel's CNI plugin builds from ``subnet.env``.

    Starting from kube-flannel's stock delegate (``hairpinMode``,
    ``isDefaultGateway``), as ``doCmdAdd``/``getDelegateIPAM`` do: ``name``
    = the network name, ``type`` bridge, ``ipMasq`` = NOT FLANNEL_IPMASQ,
    ``mtu`` = FLANNEL_MTU, ``isGateway`` true, ``cniVersion`` of the
    conflist, and host-local IPAM with one range per subnet (network form)
    and one route per network.  Two additions, each what the plugins would
    do anyway: ``bridge`` is spelled out (``cni0``, the bridge plugin's
    default, which flannel leaves implicit), and ``ipam.dataDir`` points at
    ``data_dir`` so host-local writes nothing under ``/var/lib/cni``.
    """
    env = parse_subnet_env(subnet_env_text)
    ranges = [[{"subnet": sn}] for sn in (env["subnet"], env["ipv6_subnet"]) if sn is not None]
    routes = [{"dst": nw} for nw in env["networks"] + env["ipv6_networks"]]
    return {
        **STOCK_DELEGATE,
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "bridge",
        "bridge": BRIDGE,
        "mtu": env["mtu"],
        "ipMasq": not env["ipmasq"],
        "isGateway": True,
        "ipam": {"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": data_dir},
    }


def _call(command: str, node_ns: str, pod_ns: str, container_id: str, config: Mapping[str, Any],
          ifname: str, cni_path: str) -> str:
    plugin = os.path.join(cni_path, str(config.get("type", "bridge")))
    # The caller's environment minus any stray CNI_* variable, plus the call's own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id,
               CNI_NETNS=os.path.join(NETNS_DIR, pod_ns), CNI_IFNAME=ifname, CNI_PATH=cni_path)
    # Go's json.Marshal of flannel's map sorts the keys: the same bytes here.
    stdin = json.dumps(config, sort_keys=True, separators=(",", ":"))
    proc = run(node_ns, plugin, check=False, input=stdin, env=env, timeout=60)
    if proc.returncode != 0:
        try:
            err = json.loads(proc.stdout)
        except ValueError:
            err = {}
        if not isinstance(err, dict):
            err = {}
        msg, details = str(err.get("msg", "")), str(err.get("details", ""))
        text = msg + (f": {details}" if details else "") if msg else (proc.stderr.strip() or proc.stdout.strip())
        raise CniError(f"CNI {command} {container_id} ({os.path.basename(plugin)} in netns {node_ns}, "
                       f"pod netns {pod_ns}) failed (exit {proc.returncode}): {text}",
                       code=err.get("code"), msg=msg, details=details)
    return proc.stdout


def cni_add(node_ns: str, pod_ns: str, container_id: str, config: Mapping[str, Any],
            ifname: str = "eth0", cni_path: str = CNI_PATH) -> dict[str, Any]:
    """``CNI_COMMAND=ADD``: run the plugin inside ``node_ns`` for the pod namespace ``pod_ns``.

    Returns the plugin's result (``interfaces``, ``ips``, ``routes``, ...).
    Raises ``CniError`` with the plugin's own error message.
    """
    out = _call("ADD", node_ns, pod_ns, container_id, config, ifname, cni_path)
    try:
        return json.loads(out)
    except ValueError as exc:
        raise CniError(f"CNI ADD {container_id}: the plugin's result is not JSON: {out[:200]!r}") from exc


def cni_del(node_ns: str, pod_ns: str, container_id: str, config: Mapping[str, Any],
            ifname: str = "eth0", cni_path: str = CNI_PATH) -> None:
    """``CNI_COMMAND=DEL``: release the pod's address and remove its veth.  Raises ``CniError``."""
    _call("DEL", node_ns, pod_ns, container_id, config, ifname, cni_path)
