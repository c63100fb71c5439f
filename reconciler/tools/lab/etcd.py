"""A throwaway etcd for the demo: 127.0.0.1 only, free ports, a private data dir.

::

    with LocalEtcd() as etcd:
        etcd.endpoint            # "http://127.0.0.1:PORT"
    # stopped by its PID, data dir and log removed

Data and log (``etcd.log``) live in a fresh temporary directory (under
``parent_dir`` if given), so a failed start can show the log's tail.  The tests have a fuller launcher
(``tests/etcd_server.py``: clusters, TLS, auth); this one only has to give
the demo a private server and never leave it behind.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

__all__ = ["ETCD_BIN", "EtcdNotInstalled", "LocalEtcd"]

ETCD_BIN = "/usr/bin/etcd"
LOOPBACK = "127.0.0.1"


def _state(pid: int) -> str | None:
    """The process state letter of ``/proc/<pid>/stat`` (``T``: stopped); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


class EtcdNotInstalled(RuntimeError):
    """The etcd server binary is missing."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class LocalEtcd:
    """One etcd member on loopback.  ``start()`` waits until it is healthy."""

    def __init__(self, parent_dir: str | os.PathLike[str] | None = None, *, binary: str | None = None,
                 start_timeout: float = 20.0, extra_args: Sequence[str] = ()) -> None:
        self.parent_dir = parent_dir
        self.extra_args = list(extra_args)
        self.binary = binary or ETCD_BIN
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "etcd.log"

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "LocalEtcd":
        if not os.access(self.binary, os.X_OK):
            raise EtcdNotInstalled(f"{self.binary} not found (apt-get install etcd-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=self.parent_dir))
        try:
            # A free port can be taken by someone else before etcd binds it:
            # then etcd exits at once, and we try again with fresh ports.
            for attempt in range(3):
                self._spawn()
                try:
                    self._wait_healthy()
                    return self
                except RuntimeError:
                    exited = self.proc.poll() is not None
                    self._kill()
                    if not exited or attempt == 2:
                        raise
                    shutil.rmtree(self.dir / "data", ignore_errors=True)
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _spawn(self, ports: tuple[int, int] | None = None) -> None:
        self.client_port, self.peer_port = ports or (_free_port(), _free_port())
        client, peer = self.endpoint, f"http://{LOOPBACK}:{self.peer_port}"
        argv = [self.binary, "--name", "demo", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"demo={peer}", "--initial-cluster-state", "new",
                "--initial-cluster-token", f"flannel-demo-{os.getpid()}", *self.extra_args]
        # Our variables only: an ETCD_* setting of the host must not reconfigure it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited at start (status {self.proc.returncode}): {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {self.start_timeout:g}s: {self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; then remove the data dir and log."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.proc = None   # only once it is gone: a failed stop leaves it visible
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # ------------------------------------------------------- faults (the soak)
    def pause(self) -> None:
        """SIGSTOP: the server hangs, its sockets stay open (a hung etcd, not a dead one)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            # The stop reaches every thread asynchronously; a request sent meanwhile
            # could still be answered.  Wait (bounded) until the kernel says "stopped".
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and _state(self.proc.pid) not in ("T", None):
                time.sleep(0.01)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def halt(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: clean; SIGKILL: a crash) and keep its data dir for ``restart``."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)   # a paused server could not act on SIGTERM
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def restart(self, wipe: bool = False) -> None:
        """Start again on the same ports (the agents keep their endpoint), with the
        old data or, with ``wipe``, none: a member restored from nothing."""
        assert self.dir is not None, "restart() before start()"
        self.halt()
        if wipe:
            shutil.rmtree(self.dir / "data", ignore_errors=True)
        # The ports were ours a moment ago; a start that fails (one taken meanwhile)
        # is tried again on the same ports, since the agents know only this endpoint.
        for attempt in range(5):
            self._spawn((self.client_port, self.peer_port))
            try:
                self._wait_healthy()
                return
            except RuntimeError:
                self._kill()
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except (OSError, AssertionError):
            return ""

    def __enter__(self) -> "LocalEtcd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
