"""What ``store.py`` and ``watch.py`` share: the watch's event value, the raw key-value of an
etcd answer, and how a gRPC or pyetcd error is classified (failover, re-authenticate, or give up).
Imports ``grpc`` and ``pyetcd`` like its two users, and nothing of theirs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from pyetcd import exceptions as pyetcd_exc

from reconciler.core.leases import RawKV

__all__ = ["FAILOVER_CODES", "FATAL", "LEADER", "LEADER_DETAIL", "TLS_DETAIL", "TOKEN", "TRANSIENT", "WatchEvent",
           "classify", "code_details", "raw_kv", "rpc_error"]

# Codes after which pyetcd marks the endpoint failed; we do the same for the
# raw stub calls (auth, watch) it does not wrap.
FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)

TLS_DETAIL = re.compile(r"handshake|certificate|ssl|tls|tsi_", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change under ``<prefix>/subnets/``.

    For a delete, ``kv.value`` is "" and ``kv.lease`` 0 (etcd sends no value);
    ``revision`` is the revision of the change (``kv.mod_revision``).
    """

    type: Literal["put", "delete"]
    kv: RawKV
    revision: int


# --------------------------------------------------------------------------------------------
# Error classification and translation
# --------------------------------------------------------------------------------------------

# transient: the endpoint did not answer (retry after failover); leader: a member
# answered that the cluster is between leaders (retry after a pause); token:
# re-authenticate; fatal: raise now.
TRANSIENT, LEADER, TOKEN, FATAL = "transient", "leader", "token", "fatal"

# etcd's own answers while a leader is being elected (rpctypes ErrNoLeader,
# ErrTimeout*, ErrLeaderChanged): the server is alive, the request was not applied
# or is harmless to repeat for our callers (a lost create re-lists).
LEADER_DETAIL = re.compile(r"etcdserver: (no leader|request timed out|leader changed)")


def rpc_error(exc: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind ``exc``: pyetcd replaces some with its own
    exception raised inside the ``except`` block, so the original is the context."""
    if isinstance(exc, grpc.RpcError):
        return exc
    ctx = exc.__context__
    return ctx if isinstance(ctx, grpc.RpcError) else None


def code_details(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    rpc = rpc_error(exc)
    if rpc is None:
        return None, str(exc) or type(exc).__name__
    try:
        return rpc.code(), rpc.details() or ""
    except Exception:  # not a call object (should not happen): keep the text
        return None, str(rpc)


def classify(exc: BaseException) -> str:
    """One of TRANSIENT, LEADER, TOKEN, FATAL (see above)."""
    if isinstance(exc, (pyetcd_exc.NoServerAvailableError, pyetcd_exc.WatchTimedOut)):
        return TRANSIENT
    if isinstance(exc, ValueError) and "failed node" in str(exc):
        return TRANSIENT
    code, details = code_details(exc)
    if code == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in details:
        return TOKEN
    if code in FAILOVER_CODES:
        if LEADER_DETAIL.search(details):
            return LEADER
        return FATAL if TLS_DETAIL.search(details) else TRANSIENT
    return FATAL


def raw_kv(kv: Any) -> RawKV:
    # Values that are not UTF-8 become U+FFFD: such a value is no lease anyway,
    # and a compare against the replaced text fails, so we never overwrite it.
    return RawKV(key=kv.key.decode("utf-8", "replace"), value=kv.value.decode("utf-8", "replace"),
                 lease=int(kv.lease), mod_revision=int(kv.mod_revision), create_revision=int(kv.create_revision))
