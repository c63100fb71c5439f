"""A read-only /proc/sys, as in a container that is not privileged (docs/container.md).

The VXLAN device is created over netlink either way; ``accept_ra=0`` needs a
write to /proc/sys, which such a container cannot make.  That is a normal
condition: the device is reported created (never failed), and one warning
per device says what could not be set and why.  The kernel tests run
``apply`` in a mount namespace of its own (``unshare -m``) whose /proc/sys is
bound read-only, once per netlink backend; iproute2 and /proc are the oracle.
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
import sys

import pytest

from reconciler.kernel.netlink import common
from tests.netns import ip_json, run
from tests.test_kernel_e2e import THREE, node_args, write_snapshot

# Make /proc/sys read-only in this mount namespace only, prove it (a write must fail), then run
# the command.  unshare(1) makes the new mount namespace's propagation private, so nothing
# leaks to the host.
READ_ONLY = ('mount --bind /proc/sys /proc/sys && mount -o remount,ro,bind /proc/sys || exit 97; '
             'if (echo 0 > /proc/sys/net/ipv6/conf/all/accept_ra) 2>/dev/null; then exit 98; fi; exec "$@"')
WARNING = "accept_ra=0 could not be set"


def _apply(ns: str, leases: str, backend: str, read_only: bool) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "reconciler", "apply", *node_args(leases, ns),
           "--netlink-backend", backend, "--output", "json"]
    if read_only:
        cmd = ["unshare", "-m", "sh", "-c", READ_ONLY, "sh", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode not in (97, 98), f"could not make /proc/sys read-only: {proc.stderr}"
    return proc


def _accept_ra(ns: str, dev: str) -> str:
    return run(ns, "cat", f"/proc/sys/net/ipv6/conf/{dev}/accept_ra").stdout.strip()


@pytest.mark.root
@pytest.mark.parametrize("backend", ["batched", "pyroute2"])
def test_a_read_only_proc_sys_creates_the_device_reports_success_and_warns_once(
        underlay_factory, tmp_path, backend):
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    ns = underlay_factory(1).nodes[0].ns
    leases = write_snapshot(tmp_path / "leases.json", THREE)

    proc = _apply(ns, leases, backend, read_only=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["changes"] and all(c["result"]["ok"] for c in out["changes"]), out["changes"]
    created = [c["object"]["name"] for c in out["changes"] if c["kind"] == "link" and c["op"] == "create"]
    assert "flannel.1" in created, out["changes"]
    # One warning, naming the device, the setting and the reason.
    assert proc.stderr.count(WARNING) == 1, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if WARNING in x)
    assert "flannel.1" in line and "EROFS" in line, line
    # The device exists and is up, without the setting (the kernel's default stays).
    [link] = ip_json(ns, "-d link show flannel.1")
    assert link["linkinfo"]["info_kind"] == "vxlan" and "UP" in link["flags"]
    assert _accept_ra(ns, "flannel.1") != "0"
    # Converged: the next run, still read-only, has nothing to do and nothing to say.
    again = _apply(ns, leases, backend, read_only=True)
    assert again.returncode == 0 and json.loads(again.stdout)["changes"] == [], again.stdout
    assert WARNING not in again.stderr

    # The same apply with a writable /proc/sys sets it and says nothing: the warning is about
    # the read-only mount, not about the device.
    run(ns, "ip", "link", "del", "flannel.1")
    proc = _apply(ns, leases, backend, read_only=False)
    assert proc.returncode == 0, proc.stderr
    assert WARNING not in proc.stderr and _accept_ra(ns, "flannel.1") == "0"


def test_the_warning_is_said_once_per_device_and_other_errors_still_fail(monkeypatch, caplog):
    # What the write fails with, per device; the fake namespace runner raises it instead of writing.
    failures = {"flannel.1": errno.EROFS, "flannel-v6.1": errno.EACCES, "flannel.2": errno.EIO}
    calls = []

    def disable(name: str) -> None:
        def in_netns(path, fn):
            calls.append(name)
            raise OSError(failures[name], f"{errno.errorcode[failures[name]]} text")

        monkeypatch.setattr(common, "in_netns", in_netns)
        common.disable_accept_ra("/var/run/netns/x", name)

    monkeypatch.setattr(common, "_accept_ra_warned", set())
    caplog.set_level(logging.WARNING, logger="flannel_reconciler")
    for name in ("flannel.1", "flannel.1", "flannel-v6.1", "flannel.1"):
        disable(name)                   # handled: no exception
    assert calls == ["flannel.1", "flannel.1", "flannel-v6.1", "flannel.1"]   # tried every time
    warned = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(warned) == 2, warned     # said once per device
    assert warned[0].startswith("flannel.1 ") and "EROFS" in warned[0]
    assert warned[1].startswith("flannel-v6.1 ") and "EACCES" in warned[1]
    with pytest.raises(OSError) as exc:  # anything else is still a failure
        disable("flannel.2")
    assert exc.value.errno == errno.EIO
