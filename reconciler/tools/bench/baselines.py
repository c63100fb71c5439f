"""The baselines, measured in the same run as the agent so that ratios are honest.

* ``iproute2_install``: the N-1 entries of a cold start through three
  whole processes, ``ip -batch`` (neighbours), ``bridge -batch`` (FDB),
  ``ip -batch`` (routes): the floor of a cold install.
* ``pyroute2_install``: the same entries through pyroute2, one call per
  object (what a straightforward Python agent does).
* ``iproute2_dumps``: ``ip -j route``, ``ip -j neigh``, ``bridge -j fdb`` of
  the three tables, whole processes, JSON parsed: the floor of a no-op full
  resync.
* ``apply_whole_process``: ``python -m reconciler apply`` of a snapshot into
  an empty node namespace, start to exit.

Each runs in a namespace of its own made beforehand (not timed), with
``flannel.1`` already there (except for ``apply``, which makes it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Sequence

from reconciler.tools.bench.cluster import Remote

__all__ = ["apply_whole_process", "installed", "iproute2_dumps", "iproute2_install", "pyroute2_install"]

DEV = "flannel.1"


def _batch(ns: str, tool: str, text: str) -> None:
    proc = subprocess.run([tool, "-n", ns, "-batch", "-"], input=text, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} -batch in {ns} failed: {proc.stderr.strip()[:300]}")


def iproute2_install(ns: str, remotes: Sequence[Remote]) -> float:
    """Seconds for ``ip -batch`` + ``bridge -batch`` + ``ip -batch`` to install everything."""
    neigh = "".join(f"neigh replace {r.gateway} lladdr {r.vtep_mac} dev {DEV} nud permanent\n" for r in remotes)
    fdb = "".join(f"fdb replace {r.vtep_mac} dev {DEV} dst {r.public_ip} self permanent\n" for r in remotes)
    route = "".join(f"route replace {r.subnet} via {r.gateway} dev {DEV} onlink\n" for r in remotes)
    t0 = time.monotonic()
    _batch(ns, "ip", neigh)
    _batch(ns, "bridge", fdb)
    _batch(ns, "ip", route)
    return time.monotonic() - t0


def pyroute2_install(ns: str, remotes: Sequence[Remote]) -> float:
    """Seconds for pyroute2 to install everything, one request per object (socket opened untimed)."""
    from pyroute2 import IPRoute

    NUD_PERMANENT, NTF_SELF, RTNH_F_ONLINK = 0x80, 0x02, 0x4
    with IPRoute(netns=ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=DEV)[0]
        t0 = time.monotonic()
        for r in remotes:
            ipr.neigh("replace", dst=r.gateway, lladdr=r.vtep_mac, ifindex=idx, state=NUD_PERMANENT)
        for r in remotes:
            ipr.fdb("replace", ifindex=idx, lladdr=r.vtep_mac, dst=r.public_ip, state=NUD_PERMANENT,
                    flags=NTF_SELF)
        for r in remotes:
            ipr.route("replace", dst=str(r.subnet), gateway=r.gateway, oif=idx, flags=RTNH_F_ONLINK)
        return time.monotonic() - t0


def _json_of(ns: str, tool: str, *args: str) -> list:
    out = subprocess.run([tool, "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def iproute2_dumps(ns: str, rounds: int = 3) -> float:
    """Best seconds for the three whole-process JSON dumps a full resync reads (parsed)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.monotonic()
        _json_of(ns, "ip", "route", "show", "table", "main")
        _json_of(ns, "ip", "neigh", "show", "dev", DEV)
        _json_of(ns, "bridge", "fdb", "show", "dev", DEV)
        best = min(best, time.monotonic() - t0)
    return best


def installed(ns: str) -> tuple[int, int, int]:
    """(routes, permanent neighbours, permanent FDB entries with a dst) on flannel.1, read by iproute2."""
    routes = [r for r in _json_of(ns, "ip", "route", "show", "dev", DEV) if r.get("gateway")]
    neighs = [n for n in _json_of(ns, "ip", "neigh", "show", "dev", DEV) if "PERMANENT" in n.get("state", [])]
    fdb = [f for f in _json_of(ns, "bridge", "fdb", "show", "dev", DEV)
           if f.get("dst") and f.get("state") == "permanent"]
    return len(routes), len(neighs), len(fdb)


def apply_whole_process(ns: str, leases_file: str, backend: str, env: dict) -> float:
    """Seconds for ``python -m reconciler apply`` of the snapshot, process start to exit."""
    argv = [sys.executable, "-m", "reconciler", "apply", "--leases-file", leases_file, "--netns", ns,
            "--iface", "eth0", "--netlink-backend", backend]
    t0 = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"apply into {ns} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed

