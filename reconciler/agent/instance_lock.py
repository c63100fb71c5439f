"""One agent per network namespace and per subnet file.

Two agents on one node each acquire a lease for the same PublicIP and
fight over the same devices (the loser logged thousands of errors).  Before
it touches etcd or the kernel, ``run`` takes two exclusive ``flock``
locks, and a second agent exits with a message naming the first:

* one per network namespace, in ``/run/flannel-reconciler/``, named by the
  namespace's inode (the host namespace and ``--netns X`` are different
  namespaces; two names bound to one namespace are the same);
* one next to the subnet file (``<subnet-file>.lock``), since two agents in
  different namespaces writing one subnet.env would hand pods the wrong
  subnet.  Its directory is created as the subnet file's would be; when it
  cannot be (read-only), this lock is skipped rather than fatal: an
  unwritable subnet file is retried by the agent, never a reason to exit.

``flock`` locks die with their process, so a crashed agent never leaves a
stale lock behind; the holder's pid is written into the file only to name it.
"""
from __future__ import annotations

import errno as E
import fcntl
import os

from reconciler.core.errors import ReconcilerError

__all__ = ["InstanceLock", "LOCK_DIR", "acquire_instance_lock"]

LOCK_DIR = "/run/flannel-reconciler"


class InstanceLock:
    """Held locks; ``release()`` (or process exit) frees them."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        #: Locks that could not be taken because their file could not be made (not held by anyone).
        self.skipped: list[str] = []

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "InstanceLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _take(self, path: str, what: str, required: bool = True) -> None:
        try:
            if not required:
                os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if not required:
                # The subnet file's directory is not writable (yet): the agent
                # retries writing subnet.env and must not die of it; the namespace
                # lock still keeps a second agent out.
                self.skipped.append(f"{path}: {exc.strerror}")
                return
            raise ReconcilerError(f"cannot create the lock file {path} for {what}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (E.EWOULDBLOCK, E.EAGAIN):
                who = f"pid {holder}" if holder else "another process"
                raise ReconcilerError(f"another flannel-reconciler ({who}) already manages {what} "
                                      f"(lock {path}); stop it first") from None
            raise ReconcilerError(f"cannot lock {path} for {what}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds.append(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def acquire_instance_lock(netns_path: str | None, subnet_file: str, lock_dir: str = LOCK_DIR) -> InstanceLock:
    """Take both locks or raise ``ReconcilerError`` naming the holder.

    ``netns_path``: the namespace file (``/var/run/netns/NAME``), or None for ours.
    """
    ns_file = netns_path or "/proc/self/ns/net"
    try:
        inode = os.stat(ns_file).st_ino
    except OSError as exc:
        raise ReconcilerError(f"cannot identify the network namespace {ns_file}: {exc.strerror}") from None
    where = f"network namespace {os.path.basename(netns_path)}" if netns_path else "the host network namespace"
    lock = InstanceLock()
    try:
        try:
            os.makedirs(lock_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise ReconcilerError(f"cannot create the lock directory {lock_dir}: {exc.strerror}") from None
        lock._take(os.path.join(lock_dir, f"netns-{inode}.lock"), where)
        lock._take(f"{subnet_file}.lock", f"the subnet file {subnet_file}", required=False)
    except BaseException:
        lock.release()
        raise
    return lock
