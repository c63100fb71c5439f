"""One agent per network namespace and per subnet file, and no ``apply`` beside an agent.

Two agents on one node each acquire a lease for the same PublicIP and
fight over the same devices (the loser logged thousands of errors), and an
``apply`` run by hand in a namespace an agent manages deletes what the
agent wrote (its rules, with a wrong prefix every peer route).  Before it
touches etcd or the kernel, ``run`` takes two exclusive ``flock`` locks,
and ``apply`` takes the first; a second taker exits with a message naming
the holder's pid (``plan`` and ``show`` only read, and take none):

* one per network namespace, in ``/run/flannel-reconciler/``, named by the
  namespace's inode (the host namespace and ``--netns X`` are different
  namespaces; two names bound to one namespace are the same).  The
  directory is fixed, not taken from ``$RUNTIME_DIRECTORY``: an ``apply``
  run from a shell must find the lock of the agent systemd started (the
  unit lists the directory in ``RuntimeDirectory=``; docs/systemd.md);
* one next to the subnet file (``<subnet-file>.lock``), since two agents in
  different namespaces writing one subnet.env would hand pods the wrong
  subnet.  This lock is optional: when its file cannot be made or written
  (a read-only directory, a full tmpfs), it is skipped with a warning that
  names the file; an unwritable subnet file is retried by the agent, never
  a reason to exit.

``flock`` locks die with their process, so a crashed agent never leaves a
stale lock behind; the holder's pid is written into the file only to name
it, and a pid that cannot be written (a full /run) does not undo the lock.

The namespace lock files do not pile up (one per namespace ever used): the
holder unlinks its file before it lets go, and a taker sweeps the files no
one holds.  Unlinking a lock file is safe only because every taker checks,
once it holds the lock, that the file it locked is still the one at the
path (``_still_linked``); if not, it was unlinked under it and it tries
again on a fresh file.
"""
from __future__ import annotations

import errno as E
import fcntl
import os

from reconciler.core.errors import ReconcilerError

__all__ = ["InstanceLock", "LOCK_DIR", "acquire_instance_lock", "acquire_namespace_lock"]

LOCK_DIR = "/run/flannel-reconciler"
_PREFIX, _SUFFIX = "netns-", ".lock"


class _Held(Exception):
    """The lock at ``path`` is held by another process (``pid``, if it wrote one)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


class InstanceLock:
    """Held locks; ``release()`` (or process exit) frees them."""

    def __init__(self) -> None:
        # (fd, path to unlink before closing, or None)
        self._held: list[tuple[int, str | None]] = []
        #: Optional locks not taken, each "FILE: why" (logged as warnings by ``run``).
        self.skipped: list[str] = []
        #: Locks held whose file could not take the pid, each "FILE: why" (logged too).
        self.notes: list[str] = []

    def release(self) -> None:
        for fd, path in reversed(self._held):
            if path is not None and _still_linked(fd, path):
                try:
                    os.unlink(path)     # while still held: see the module docstring
                except OSError:
                    pass                # left for the next taker's sweep
            os.close(fd)
        self._held.clear()

    def __enter__(self) -> "InstanceLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _take(self, path: str, what: str, *, required: bool = True, unlink: bool = False) -> None:
        try:
            if not required:
                os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
            fd = _lock(path)
        except _Held as held:
            who = f"pid {held.pid}" if held.pid else "another process"
            raise ReconcilerError(f"another flannel-reconciler ({who}) already manages {what} "
                                  f"(lock {path}); stop it first") from None
        except OSError as exc:
            if not required:
                # The subnet file's directory is not writable (yet), or full: the
                # agent retries writing subnet.env and must not die of it; the
                # namespace lock still keeps a second agent out.
                cause = f"{exc.filename}: {exc.strerror}" if exc.filename not in (None, path) else exc.strerror
                self.skipped.append(f"{path}: {cause}")
                return
            raise ReconcilerError(f"cannot lock {exc.filename or path} for {what}: {exc.strerror}") from None
        self._held.append((fd, path if unlink else None))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            # Read-only (opened O_RDONLY) or full: the lock is held all the same;
            # a second taker is refused without our pid.
            self.notes.append(f"{path}: the holder's pid not written: {exc.strerror}")


def _open(path: str) -> int:
    """The lock file, created if missing; read-only if it exists but cannot be written (flock needs no write)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in (E.EACCES, E.EROFS, E.EPERM) and os.path.exists(path):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        raise OSError(exc.errno, exc.strerror, path) from None


def _lock(path: str) -> int:
    """An fd holding ``flock(LOCK_EX)`` on the file now at ``path``; raises ``_Held`` or ``OSError``."""
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (E.EWOULDBLOCK, E.EAGAIN):
                raise _Held(holder) from None
            raise OSError(exc.errno, exc.strerror, path) from None
        if _still_linked(fd, path):
            return fd
        os.close(fd)    # its holder unlinked it as we opened it: lock the new file


def _still_linked(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _sweep(lock_dir: str, keep: str) -> None:
    """Unlink the namespace lock files no one holds (left by agents that were killed)."""
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return
    for name in names:
        path = os.path.join(lock_dir, name)
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)) or path == keep:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _still_linked(fd, path):
                os.unlink(path)
        except OSError:
            pass                        # held: a live agent's
        finally:
            os.close(fd)


def _namespace(netns_path: str | None) -> tuple[int, str]:
    ns_file = netns_path or "/proc/self/ns/net"
    try:
        inode = os.stat(ns_file).st_ino
    except OSError as exc:
        raise ReconcilerError(f"cannot identify the network namespace {ns_file}: {exc.strerror}") from None
    where = f"network namespace {os.path.basename(netns_path)}" if netns_path else "the host network namespace"
    return inode, where


def _take_namespace(lock: InstanceLock, netns_path: str | None, lock_dir: str) -> None:
    inode, where = _namespace(netns_path)
    try:
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ReconcilerError(f"cannot create the lock directory {lock_dir}: {exc.strerror}") from None
    path = os.path.join(lock_dir, f"{_PREFIX}{inode}{_SUFFIX}")
    _sweep(lock_dir, keep=path)
    lock._take(path, where, unlink=True)


def acquire_instance_lock(netns_path: str | None, subnet_file: str, lock_dir: str = LOCK_DIR) -> InstanceLock:
    """``run``'s locks: the namespace's and the subnet file's, or ``ReconcilerError`` naming the holder.

    ``netns_path``: the namespace file (``/var/run/netns/NAME``), or None for ours.
    """
    lock = InstanceLock()
    try:
        _take_namespace(lock, netns_path, lock_dir)
        lock._take(f"{subnet_file}.lock", f"the subnet file {subnet_file}", required=False)
    except BaseException:
        lock.release()
        raise
    return lock


def acquire_namespace_lock(netns_path: str | None, lock_dir: str = LOCK_DIR) -> InstanceLock:
    """``apply``'s lock: the namespace's only, held while it writes.

    An agent started meanwhile is refused like a second agent (under systemd,
    ``Restart=`` starts it again a few seconds later).
    """
    lock = InstanceLock()
    try:
        _take_namespace(lock, netns_path, lock_dir)
    except BaseException:
        lock.release()
        raise
    return lock
