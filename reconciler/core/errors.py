"""The exception tree, and errno classifiers used at the seams.

::

    ReconcilerError                 anything this package raises on purpose
    +-- ConfigError                 the network config (or a CLI input) is invalid; names the key
    +-- LeaseError                  one lease is unusable; names the etcd key (never fatal to a cycle)
    +-- NetlinkError                a netlink request failed; carries errno and names the object
    |   +-- DumpInterrupted         NLM_F_DUMP_INTR kept coming back: the dump is not trusted
    |   +-- NamespaceNotFound       --netns names a namespace that does not exist
    +-- EtcdError                   etcd unreachable, timed out, or refused us; names the endpoint
        +-- EtcdAuthError           wrong credentials or certificates
        +-- EtcdCompacted           the watch revision was compacted: re-list

Foreign exceptions (pyroute2's, grpc's, pyetcd's) are translated where those
libraries are called and chained with ``from``; nothing deeper sees them.
"""
from __future__ import annotations

import errno as _errno

__all__ = [
    "ConfigError",
    "DumpInterrupted",
    "EtcdAuthError",
    "EtcdCompacted",
    "EtcdError",
    "LeaseError",
    "NamespaceNotFound",
    "NetlinkError",
    "ReconcilerError",
    "is_exists",
    "is_gone",
]


class ReconcilerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ReconcilerError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"network config: {key}: {reason}")
        self.key = key
        self.reason = reason


class LeaseError(ReconcilerError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"lease {key}: {reason}")
        self.key = key
        self.reason = reason


class NetlinkError(ReconcilerError):
    def __init__(self, errno: int | None, message: str, obj: object | None = None) -> None:
        name = _errno.errorcode.get(errno or 0, str(errno)) if errno else None
        text = f"{message} ({name}: {_strerror(errno)})" if errno else message
        super().__init__(text)
        self.errno = errno
        self.obj = obj


class DumpInterrupted(NetlinkError):
    pass


class NamespaceNotFound(NetlinkError):
    pass


class EtcdError(ReconcilerError):
    pass


class EtcdAuthError(EtcdError):
    pass


class EtcdRolledBack(EtcdError):
    """etcd's revision is lower than one we already saw, or its cluster id changed: its data dir
    was wiped or restored from a backup.  A watch waiting for the old revision would wait forever."""

    def __init__(self, message: str, seen: int = 0, now: int = 0) -> None:
        super().__init__(message)
        self.seen, self.now = seen, now


class EtcdCompacted(EtcdError):
    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


def _strerror(code: int | None) -> str:
    import os

    return os.strerror(code) if code else ""


def is_gone(code: int | None) -> bool:
    """The object to delete is already gone: ESRCH for routes, ENOENT for neighbours,
    ENODEV for a device.  A delete that meets one of these has done its job."""
    return code in (_errno.ENOENT, _errno.ESRCH, _errno.ENODEV, _errno.EADDRNOTAVAIL)


def is_exists(code: int | None) -> bool:
    return code == _errno.EEXIST
