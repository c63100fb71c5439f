"""The etcd v3 seam: with ``watch.py`` (the watch stream) and ``rpc.py`` (what both share),
the only modules that import ``pyetcd`` and ``grpc``.

Everything above this module sees typed values (``RawKV``, ``LeaseSnapshot``,
``WatchEvent``, ints, bools) and ``reconciler.core.errors`` exceptions; every
foreign exception is translated here and chained with ``from``.

The client is ``pyetcd`` (etcd-sdk-python).  Its traps, measured in
docs/kernel-facts.md section 7, shape this module:

* a failed endpoint is refused for ``time_retry`` seconds, so endpoints are
  built with ``time_retry=1``;
* failover does not retry the failing call, so a call that fails on one
  endpoint is retried on the next (at most three attempts, none begun after
  ``2 * timeout``): losing a cluster's leader can cost two -- the dead member,
  then a follower still forwarding to it until the election;
* every call carries a timeout (a SIGSTOPped server would otherwise block
  forever);
* a watch dies silently with its server, so the watch (in ``watch.py``)
  is our own stream with a liveness probe (a read on the same connection
  after silence) and resumes from the last revision + 1;
* "lease not found" escapes as a raw gRPC NOT_FOUND: it becomes
  ``EtcdLeaseNotFound``.

Auth: flanneld passes ``--etcd-username/--etcd-password`` to clientv3, which
fetches a token and re-fetches it when the server says it is invalid (simple
tokens expire after ``--auth-token-ttl``, 300 s by default, and do not survive
a restart).  pyetcd authenticates once in its constructor and never again, so
authentication is done here, lazily and on demand.
"""
from __future__ import annotations

import logging
import posixpath
import re
import threading
import time
from typing import Callable, Iterator, Sequence, TypeVar
from urllib.parse import urlsplit

import grpc
from pyetcd import Endpoint, MultiEndpointEtcd3Client, etcdrpc
from pyetcd import exceptions as pyetcd_exc
from pyetcd import transactions as pyetcd_txn
from pyetcd import utils as pyetcd_utils

from reconciler.core.errors import EtcdAuthError, EtcdError
from reconciler.core.leases import LeaseSnapshot, RawKV
from reconciler.etcd.rpc import FAILOVER_CODES as _FAILOVER_CODES
from reconciler.etcd.rpc import LEADER as _LEADER
from reconciler.etcd.rpc import LEADER_DETAIL as _LEADER_DETAIL
from reconciler.etcd.rpc import TLS_DETAIL as _TLS_DETAIL
from reconciler.etcd.rpc import TOKEN as _TOKEN
from reconciler.etcd.rpc import TRANSIENT as _TRANSIENT
from reconciler.etcd.rpc import WatchEvent
from reconciler.etcd.rpc import classify as _classify
from reconciler.etcd.rpc import code_details as _code_details
from reconciler.etcd.rpc import raw_kv as _raw_kv
from reconciler.etcd.rpc import rpc_error as _rpc_error

__all__ = ["EtcdLeaseNotFound", "EtcdStore", "WatchEvent", "DEFAULT_PREFIX"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_PORT = 2379

#: Seconds a failed endpoint is skipped (pyetcd's default of 300 would refuse a
#: restarted etcd for five minutes).
TIME_RETRY = 1.0

# gRPC channel options.  Reconnect backoff is capped low so a restarted etcd is
# found again within about a second (gRPC's default grows to 120 s); a 5,000-lease
# range is about 1 MB, well below the raised receive limit.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # The watch is read as a server-streaming call on the consumer's own thread (etcd/watch.py,
    # _WatchStream); pyetcd makes no server-streaming call of its own that we use.
    ("SingleThreadedUnaryStream", 1),     # grpc.experimental.ChannelOptions.SingleThreadedUnaryStream
]

_MAX_ATTEMPTS = 3

T = TypeVar("T")


class EtcdLeaseNotFound(EtcdError):
    """The etcd lease id does not exist (expired, revoked, or never granted)."""

    def __init__(self, message: str, lease_id: int) -> None:
        super().__init__(message)
        self.lease_id = lease_id


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------

class EtcdStore:
    """flanneld's view of etcd: one prefix, leases under ``<prefix>/subnets/``.

    ``endpoints`` are URLs as in ``--etcd-endpoints`` (``http://127.0.0.1:2379``,
    ``https://...``; a bare ``host:port`` means http).  Like clientv3, the
    scheme decides TLS: https uses TLS with ``ca_file`` (or the system roots)
    and presents ``cert_file``/``key_file`` when both are given.

    No I/O happens in the constructor.  Every call has ``timeout`` seconds per
    attempt and at most three attempts, none started after ``2 * timeout``,
    so a call returns or raises within ``3 * timeout + 1`` s; endpoints that
    refuse connections fail a call in about two seconds.  One store may be
    shared between threads (the watch in one, lease renewal in another).
    """

    def __init__(self, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise EtcdError("no etcd endpoints given")
        if bool(cert_file) != bool(key_file):
            raise EtcdAuthError("etcd TLS: the client certificate and key must be given together")
        if bool(username) != bool(password):
            raise EtcdAuthError("etcd auth: username and password must be given together")
        self.prefix = _clean_prefix(prefix)
        self.timeout = float(timeout)
        self._username = username or None
        self._password = password or None
        self._lock = threading.RLock()
        self._closed = threading.Event()  # ends the watches of a closed store
        self._token: str | None = None
        self._need_token = self._username is not None

        parsed = [_parse_endpoint(e) for e in endpoints]
        self.endpoints: tuple[str, ...] = tuple(url for url, *_ in parsed)
        self._secure = any(secure for _, _, _, secure in parsed)
        creds = self._tls_credentials(ca_file, cert_file, key_file) if self._secure else None
        if cert_file and not self._secure:
            # clientv3 drops credentials for http:// endpoints; say so rather than surprise.
            log.warning("etcd: client certificate given but no https:// endpoint: connecting without TLS")
        eps = [Endpoint(host, port, secure=secure, creds=creds if secure else None,
                        time_retry=TIME_RETRY, opts=_CHANNEL_OPTIONS)
               for _, host, port, secure in parsed]
        self._url_by_netloc = {ep.netloc: url for ep, (url, *_) in zip(eps, parsed)}
        # No user/password here: pyetcd would authenticate once, in the
        # constructor, against one endpoint, and never again.
        self._client = MultiEndpointEtcd3Client(endpoints=eps, timeout=self.timeout, failover=True)

    @staticmethod
    def _tls_credentials(ca_file: str | None, cert_file: str | None, key_file: str | None) -> grpc.ChannelCredentials:
        def read(path: str | None, what: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise EtcdAuthError(f"etcd TLS: cannot read the {what} {path}: {exc.strerror}") from exc

        return grpc.ssl_channel_credentials(root_certificates=read(ca_file, "CA file"),
                                            private_key=read(key_file, "key file"),
                                            certificate_chain=read(cert_file, "certificate file"))

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    def __enter__(self) -> "EtcdStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint_in_use(self) -> str:
        """The URL of the endpoint the next call goes to (for logs and tests)."""
        return self._url_by_netloc.get(self._client._current_endpoint_label, "?")

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def config_key(self) -> str:
        return self._key("config")

    @property
    def subnets_prefix(self) -> str:
        """``<prefix>/subnets/`` (with the trailing slash)."""
        return self._key("subnets", "")

    # -- the call wrapper -----------------------------------------------------------------------

    def _call(self, op: str, fn: Callable[[MultiEndpointEtcd3Client], T], *, lease_id: int | None = None) -> T:
        """Run ``fn(client)`` with bounded retries, every failure translated.

        A transient failure (endpoint down or silent, cluster between leaders)
        is retried on the next usable endpoint: at most ``_MAX_ATTEMPTS``
        attempts, and none started later than ``2 * timeout`` after the first.
        Losing a cluster's leader can cost two attempts -- the dead member,
        then a follower that still forwards to it until the election -- hence
        three, not two.  A rejected token is renewed once.
        """
        started = time.monotonic()
        attempts = 0
        reauthed = False
        while True:
            self._ensure_token()
            attempts += 1
            try:
                return fn(self._client)
            except (grpc.RpcError, pyetcd_exc.Etcd3Exception, ValueError) as exc:
                kind = _classify(exc)
                url = self.endpoint_in_use  # the one that failed (pyetcd switches only on the next call)
                if kind in (_TRANSIENT, _LEADER) and _rpc_error(exc) is not None:
                    self._fail_current_endpoint()
                if kind == _TOKEN and self._username and not reauthed:
                    reauthed = True
                    attempts -= 1
                    self._invalidate_token()
                    continue
                if kind in (_TRANSIENT, _LEADER) and attempts < _MAX_ATTEMPTS \
                        and time.monotonic() - started < 2 * self.timeout:
                    if kind == _LEADER:
                        time.sleep(0.25)  # a member answered: an election is under way
                    self._await_endpoint()
                    continue
                raise self._translate(op, url, exc, lease_id=lease_id) from exc

    def _fail_current_endpoint(self) -> None:
        label = self._client._current_endpoint_label
        if label is not None:
            self._fail_endpoint(label)

    def _fail_endpoint(self, label: str) -> None:
        """Mark ``label`` failed and, if it is the current one, move on to the
        next usable endpoint now.  pyetcd only moves when the current endpoint
        is failed at the moment of the call, and with ``time_retry=1`` the mark
        has expired by the time a backed-off watch reconnects: without the move
        it would keep going back to a dead member."""
        with self._lock:
            endpoints = self._client.endpoints
            if label not in endpoints:
                return
            endpoints[label].fail()
            # Cached stubs are bound to the failed endpoint's channel; pyetcd clears
            # them the same way after its own failures.
            self._client._clear_old_stubs()
            if self._client._current_endpoint_label != label:
                return
            labels = list(endpoints)
            i = labels.index(label)
            for candidate in labels[i + 1:] + labels[:i]:
                if not endpoints[candidate].is_failed():
                    self._client._current_endpoint_label = candidate
                    return

    def _open_channel(self) -> tuple[str, grpc.Channel]:
        """The current endpoint's label and channel (failing over if it is failed)."""
        with self._lock:
            channel = self._client.channel
            return self._client._current_endpoint_label, channel

    def _await_endpoint(self) -> None:
        """Sleep until some endpoint is usable again (at most ``TIME_RETRY``)."""
        now = time.time()
        waits = [ep.last_failed + ep.time_retry - now for ep in self._client.endpoints.values()]
        delay = min(waits)
        if delay > 0:
            time.sleep(min(delay + 0.01, TIME_RETRY))

    def _translate(self, op: str, url: str, exc: BaseException, *, lease_id: int | None = None) -> EtcdError:
        code, details = _code_details(exc)
        where = f"etcd {op} via {url}"
        if isinstance(exc, pyetcd_exc.NoServerAvailableError) or (
                isinstance(exc, ValueError) and "failed node" in str(exc)):
            return EtcdError(f"etcd {op}: no endpoint answered ({', '.join(self.endpoints)})")
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return EtcdLeaseNotFound(f"{where}: lease {lease_id or '?'} not found (expired or revoked)",
                                     lease_id or 0)
        if code == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in details:
            return EtcdAuthError(f"{where}: authentication token rejected: {details}")
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
            return EtcdAuthError(f"{where}: permission denied (user {self._username or '(none)'}): {details}")
        if code == grpc.StatusCode.INVALID_ARGUMENT and ("authentication failed" in details
                                                         or "user name is empty" in details):
            return EtcdAuthError(f"{where}: {details}")
        if code in _FAILOVER_CODES and _TLS_DETAIL.search(details):
            return EtcdAuthError(f"{where}: TLS handshake failed (check the CA, client certificate and key): "
                                 f"{details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EtcdError(f"{where}: no answer within {self.timeout:g}s")
        if _LEADER_DETAIL.search(details):
            return EtcdError(f"{where}: the cluster has no leader: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = " (TLS: check the CA and client certificate)" if self._secure else ""
            return EtcdError(f"{where}: unavailable: {details}{hint}")
        return EtcdError(f"{where}: {code.name if code else type(exc).__name__}: {details}")

    # -- auth -----------------------------------------------------------------------------------

    def _invalidate_token(self) -> None:
        with self._lock:
            self._token = None
            self._client.metadata = None
            self._need_token = True

    def _ensure_token(self) -> None:
        if not self._need_token:
            return
        with self._lock:
            if not self._need_token:
                return
            request = etcdrpc.AuthenticateRequest(name=self._username, password=self._password)
            retried = False
            while True:
                try:
                    response = self._client.authstub.Authenticate(request, self.timeout)
                    token: str | None = response.token
                    break
                except (grpc.RpcError, pyetcd_exc.Etcd3Exception, ValueError) as exc:
                    code, details = _code_details(exc)
                    if code == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in details:
                        # Auth is off on the server: proceed without a token, as clientv3 does.
                        token = None
                        break
                    url = self.endpoint_in_use
                    if isinstance(exc, grpc.RpcError) and code in _FAILOVER_CODES:
                        self._fail_current_endpoint()  # a raw stub call: pyetcd did not see it
                    if _classify(exc) in (_TRANSIENT, _LEADER) and not retried:
                        retried = True
                        self._await_endpoint()
                        continue
                    raise self._translate("authenticate", url, exc) from exc
            self._token = token
            self._client.metadata = (("token", token),) if token else None
            self._need_token = False

    def _metadata(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        md = list(self._client.metadata or ())
        md.extend(extra)
        return md

    # -- reads ----------------------------------------------------------------------------------

    def snapshot(self) -> LeaseSnapshot:
        """Every key under ``<prefix>/`` (config and subnets) from one range, so
        they are consistent at one revision: the header revision, from which a
        watch resumes with ``revision + 1``.  No per-key TTL calls: the lease id
        is in the key-value itself."""
        start = self._key("")
        response = self._call("snapshot", lambda c: c.get_range_response(
            start, pyetcd_utils.prefix_range_end(start.encode())))
        kvs = tuple(_raw_kv(kv) for kv in response.kvs)
        return LeaseSnapshot(prefix=self.prefix, revision=int(response.header.revision), kvs=kvs,
                             cluster_id=int(response.header.cluster_id))

    def status(self) -> tuple[int, int]:
        """(revision, cluster id) from one cheap linearizable read (the config key, keys only):
        the member first catches up with the leader, so the revision is no older than any
        revision the cluster already gave anyone.  The agent's liveness probe, and the proof
        that a revision lower than one seen before is real, not a lagging follower."""
        response = self._call("status", lambda c: c.get_response(self.config_key, keys_only=True))
        return int(response.header.revision), int(response.header.cluster_id)

    def get(self, key: str) -> RawKV | None:
        response = self._call(f"get {key}", lambda c: c.get_response(key))
        return _raw_kv(response.kvs[0]) if response.kvs else None

    def get_config(self) -> str | None:
        kv = self.get(self.config_key)
        return kv.value if kv is not None else None

    # -- writes ---------------------------------------------------------------------------------

    def put(self, key: str, value: str, lease_id: int = 0) -> int:
        """Unconditional put; returns the new revision."""
        response = self._call(f"put {key}", lambda c: c.put(key, value, lease=lease_id), lease_id=lease_id)
        return int(response.header.revision)

    def put_config(self, raw: str) -> int:
        return self.put(self.config_key, raw)

    def delete(self, key: str) -> bool:
        """True if the key existed."""
        return bool(self._call(f"delete {key}", lambda c: c.delete(key)))

    def create_if_absent(self, key: str, value: str, lease_id: int) -> bool:
        """flanneld's create: ``If Version(key)==0 Then Put(key, value, lease)``.
        False if the key exists (someone else won the race)."""
        return self._txn(f"create {key}", [pyetcd_txn.Version(key) == 0],
                         [pyetcd_txn.Put(key, value, lease=lease_id)], lease_id)

    def put_if_value(self, key: str, expected_value: str, new_value: str, lease_id: int) -> bool:
        """``If Value(key)==expected Then Put(key, new, lease)``: write only if the
        key still holds what we read (a missing key fails the compare in etcd)."""
        return self._txn(f"put-if-value {key}", [pyetcd_txn.Value(key) == expected_value],
                         [pyetcd_txn.Put(key, new_value, lease=lease_id)], lease_id)

    def delete_if_value(self, key: str, expected_value: str) -> bool:
        """``If Value(key)==expected Then Delete(key)``."""
        return self._txn(f"delete-if-value {key}", [pyetcd_txn.Value(key) == expected_value],
                         [pyetcd_txn.Delete(key)], None)

    def _txn(self, op: str, compare: list, success: list, lease_id: int | None) -> bool:
        succeeded, _ = self._call(op, lambda c: c.transaction(compare=compare, success=success, failure=[]),
                                  lease_id=lease_id)
        return bool(succeeded)

    # -- leases ---------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        lease = self._call(f"grant ttl={ttl}", lambda c: c.lease(int(ttl)))
        return int(lease.id)

    def refresh(self, lease_id: int) -> int:
        """One keepalive; returns the TTL etcd reset the lease to.  Raises
        ``EtcdLeaseNotFound`` if the lease is gone (etcd answers TTL 0)."""
        responses = self._call(f"keepalive {lease_id}", lambda c: list(c.refresh_lease(lease_id)),
                               lease_id=lease_id)
        if not responses:
            raise EtcdError(f"etcd keepalive {lease_id} via {self.endpoint_in_use}: no answer")
        ttl = int(responses[0].TTL)
        if ttl <= 0:
            raise EtcdLeaseNotFound(f"etcd keepalive: lease {lease_id} not found (expired or revoked)", lease_id)
        return ttl

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys are deleted).  ``EtcdLeaseNotFound`` if it is gone."""
        self._call(f"revoke {lease_id}", lambda c: c.revoke_lease(lease_id), lease_id=lease_id)

    def time_to_live(self, lease_id: int) -> int:
        """Remaining seconds; -1 if the lease does not exist (etcd's answer, also for id 0)."""
        response = self._call(f"time-to-live {lease_id}", lambda c: c.get_lease_info(lease_id),
                              lease_id=lease_id)
        return int(response.TTL)

    # -- watch ----------------------------------------------------------------------------------
    # The surface the watch stream (``watch.py``) uses; the rest of the store stays private.

    @property
    def closed(self) -> threading.Event:
        """Set when the store is closed: every watch ends."""
        return self._closed

    @property
    def has_credentials(self) -> bool:
        """Whether calls carry an auth token (``--etcd-username``): an expired one is renewed once."""
        return bool(self._username)

    def open_watch_channel(self, *metadata: tuple[str, str]) -> tuple[str, str, grpc.Channel, list[tuple[str, str]]]:
        """For a new watch stream: the endpoint's label and URL, its channel, and the call
        metadata (the auth token, if any, and ``metadata``)."""
        self._ensure_token()
        label, channel = self._open_channel()
        return label, self._url_by_netloc.get(label, self.endpoint_in_use), channel, self._metadata(*metadata)

    def renew_token(self) -> None:
        """Drop the auth token: the next call or stream authenticates again."""
        self._invalidate_token()

    def translate_error(self, op: str, url: str, exc: BaseException) -> EtcdError:
        """The ``EtcdError`` that names ``op``, the endpoint and the cause of ``exc``."""
        return self._translate(op, url, exc)

    def fail_endpoint(self, label: str) -> None:
        """Skip this endpoint for a while: the next stream goes to another."""
        self._fail_endpoint(label)


    def watch(self, start_revision: int, stop: threading.Event | None = None, *,
              progress_interval: float = 30.0, give_up_after: float = 60.0,
              health: Callable[[bool], None] | None = None, cluster_id: int = 0,
              created: Callable[[], None] | None = None) -> Iterator[WatchEvent]:
        """Changes under ``<prefix>/subnets/`` from ``start_revision`` on, in order.

        The stream is checked for liveness: after ``progress_interval`` s of
        silence it reads one key of the prefix on the same connection, and a
        stream whose member does not answer within ``timeout`` is dropped.  A dropped or broken stream (etcd
        restarted, member killed, member without leader) is re-created on an
        available endpoint from the last delivered revision + 1, so no change
        is lost and none is repeated.

        ``health(ok)`` is called with False as soon as a stream breaks (while
        it is being re-created) and with True whenever a stream answers, so
        the caller can report an outage without waiting for ``give_up_after``.

        Raises ``EtcdCompacted`` if the revision to resume from was compacted
        (the caller re-lists with ``snapshot()``), ``EtcdRolledBack`` if etcd
        answers with a revision below ``start_revision - 1`` (confirmed by a
        linearizable read) or with a cluster id other than ``cluster_id`` (when
        given): its history was lost; the caller re-lists.  ``created()`` is called each time etcd
        has registered a stream's watch (its "created" answer): from then on the stream sees every
        write, at once when ``start_revision`` was above etcd's revision when it registered
        (docs/incremental.md, "Start-up").  ``EtcdAuthError`` on
        credentials or permissions, and ``EtcdError`` when no endpoint has
        answered for ``give_up_after`` s.  Returns when ``stop`` is set
        (checked at least every 0.2 s), when the store is closed, or when the
        generator is closed.
        """
        if start_revision < 1:
            raise ValueError(f"watch start revision must be >= 1, not {start_revision}")
        return self._watch(int(start_revision), stop, float(progress_interval), float(give_up_after), health,
                           int(cluster_id), created)

    def _watch(self, next_rev: int, stop: threading.Event | None, progress_interval: float,
               give_up_after: float, health=None, cluster_id: int = 0, created=None) -> Iterator[WatchEvent]:
        # Imported when first watched: plan, apply and show never load the stream machinery.
        from reconciler.etcd.watch import watch_subnets
        return watch_subnets(self, next_rev, stop, progress_interval, give_up_after, health, cluster_id, created)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _clean_prefix(prefix: str) -> str:
    """flanneld joins keys with Go's ``path.Join``, which cleans the path: a
    trailing or doubled ``/`` is dropped."""
    cleaned = posixpath.normpath(re.sub(r"/+", "/", prefix.strip() or "/"))
    return "" if cleaned == "/" else cleaned


def _parse_endpoint(url: str) -> tuple[str, str, int, bool]:
    """``http(s)://host:port`` -> (url, host for gRPC, port, secure)."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise EtcdError(f"bad etcd endpoint {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise EtcdError(f"bad etcd endpoint {url!r}: expected http://host:port or https://host:port")
    host = parts.hostname
    grpc_host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{parts.netloc}", grpc_host, port, scheme == "https"
