"""A Debian root tree made by mmdebstrap, and systemd booted in it with systemd-nspawn.

::

    tarball = debian_tarball(["systemd", "systemd-sysv", "dbus", "python3"], workdir)
    root = extract(tarball, workdir / "root")
    with Booted(root, netns="/run/netns/NODE") as box:
        box.run("systemctl", "start", "x.service")
    # powered off and reaped, even on failure

``debian_tarball`` builds ``bookworm`` from the Debian mirror apt is configured with (its
deb822 sources file) in about half a minute.  Outside CI the tarball is cached under
``CACHE_DIR``, keyed by suite and package list, so repeated local runs skip that; in CI (``CI``
set) it is always built from scratch, so CI proves the recipe, not a leftover.

``Booted`` runs ``systemd-nspawn -b --register=no --keep-unit``: no machined and no systemd
on the host are needed (this host's PID 1 is not systemd).  Commands run in the container
through ``nsenter`` into its PID 1's namespaces, so no login, no machinectl and no D-Bus are
needed either: systemctl, run as root, talks to systemd over its private socket.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

__all__ = ["Booted", "CACHE_DIR", "SUITE", "debian_tarball", "extract", "tools_missing"]

SUITE = "bookworm"
CACHE_DIR = Path("/var/cache/flannel-reconciler-tests/debian-tree")
TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter")
_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def tools_missing() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def debian_tarball(packages: Sequence[str], workdir: Path, *, timeout: float = 600) -> Path:
    """A tarball of a ``--variant=apt`` tree with ``packages``: cached outside CI, built in CI."""
    key = hashlib.sha256(" ".join([SUITE, *sorted(packages)]).encode()).hexdigest()[:16]
    use_cache = not os.environ.get("CI")
    target = (CACHE_DIR if use_cache else workdir) / f"debian-{SUITE}-{key}.tar"
    if use_cache and target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.tar")
    argv = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(packages)}", SUITE, str(partial)]
    if _SOURCES.exists():
        argv.append(str(_SOURCES))      # the mirror apt uses here (deb822), not a guessed one
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed ({proc.returncode}): {proc.stderr[-2000:]}")
    partial.rename(target)              # whole or absent: a killed build leaves no half cache
    return target


def extract(tarball: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True, capture_output=True, timeout=300)
    return root


class Booted:
    """systemd booted in ``root`` (``systemd-nspawn -b``), optionally in an existing network namespace.

    ``capabilities``: added to nspawn's default set; ``CAP_NET_ADMIN`` is not in it, even
    with ``--network-namespace-path``.
    """

    def __init__(self, root: Path, *, netns: str | None = None, capabilities: Sequence[str] = (),
                 log: Path | None = None, boot_timeout: float = 120) -> None:
        self.root = root
        self.netns = netns
        self.capabilities = tuple(capabilities)
        self.log = log or Path(tempfile.mkstemp(prefix="nspawn-", suffix=".log")[1])
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    def __enter__(self) -> "Booted":
        argv = ["systemd-nspawn", "--quiet", "-D", str(self.root), "-b", "--register=no", "--keep-unit",
                "--console=passive"]
        if self.netns:
            argv.append(f"--network-namespace-path={self.netns}")
        if self.capabilities:
            argv.append("--capability=" + ",".join(self.capabilities))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            self.leader = self._find_leader()
            self._wait_booted()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_booted(self) -> None:
        """Until systemd has finished booting (or says it is degraded): then units can be started.

        ``is-system-running --wait`` answers "offline" until systemd listens on its private
        socket, which it does a moment after nspawn has started it: asked again until then.
        """
        deadline = time.monotonic() + self.boot_timeout
        while True:
            left = max(1.0, deadline - time.monotonic())
            out = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=left)
            state = out.stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"the container did not boot: {state} {out.stderr.strip()}\n{self.log_tail()}")
            time.sleep(0.1)

    def _find_leader(self) -> int:
        """The container's PID 1, seen from here: nspawn's child in another PID namespace."""
        assert self.proc is not None
        ours = os.readlink("/proc/self/ns/pid")
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.proc.returncode}): {self.log_tail()}")
            for pid in _children(self.proc.pid):
                try:
                    if os.readlink(f"/proc/{pid}/ns/pid") != ours:
                        return pid
                except OSError:
                    continue
            time.sleep(0.05)
        raise RuntimeError(f"no container PID 1 under systemd-nspawn: {self.log_tail()}")

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        """``argv`` inside the container (all its namespaces, its root), as root."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                   "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        """Power off (SIGRTMIN+4 to the container's systemd is what ``poweroff`` sends), then reap nspawn."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            if self.leader is not None:
                _signal(self.leader, signal.SIGRTMIN + 4)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                # The container's PID 1 takes its PID namespace with it; nspawn then exits.
                if self.leader is not None:
                    _signal(self.leader, signal.SIGKILL)
                _signal(proc.pid, signal.SIGKILL)
                proc.wait(30)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
