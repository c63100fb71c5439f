"""The etcd watch stream: ``EtcdStore.watch()``'s machinery.

With ``store.py`` and ``rpc.py``, the only modules that import ``pyetcd`` and
``grpc``.  ``EtcdStore.watch`` calls ``watch_subnets`` here, which uses the
store's small public watch surface (``WatchedStore``) and the error
classification of ``rpc.py``; it imports nothing from ``store.py``.

A watch dies silently with its server, so this is our own stream, read by
its consumer, with a watchdog thread that keeps the time (gRPC's iterator
has no timeout) and a liveness probe (a read on the same connection after
silence); a broken stream is re-created on an available endpoint from the
last delivered revision + 1.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

import grpc
from pyetcd import etcdrpc
from pyetcd import exceptions as pyetcd_exc
from pyetcd import utils as pyetcd_utils
from pyetcd.etcdrpc import kv_pb2

from reconciler.core.errors import EtcdAuthError, EtcdCompacted, EtcdError, EtcdRolledBack
from reconciler.etcd.rpc import FAILOVER_CODES, LEADER, TOKEN, TRANSIENT, WatchEvent, classify, code_details, raw_kv
from reconciler.core.leases import RawKV

__all__ = ["WatchedStore", "watch_subnets"]

# The watch logs as the store: one logger name for everything etcd says.
log = logging.getLogger("reconciler.etcd.store")


class WatchedStore(Protocol):
    """What a watch needs of ``EtcdStore``."""

    @property
    def endpoints(self) -> Sequence[str]: ...

    @property
    def timeout(self) -> float: ...

    @property
    def subnets_prefix(self) -> str: ...

    @property
    def endpoint_in_use(self) -> str: ...

    @property
    def closed(self) -> threading.Event: ...

    @property
    def has_credentials(self) -> bool: ...

    def open_watch_channel(self, *metadata: tuple[str, str]) -> tuple[str, str, grpc.Channel, list]: ...

    def renew_token(self) -> None: ...

    def translate_error(self, op: str, url: str, exc: BaseException) -> EtcdError: ...

    def fail_endpoint(self, label: str) -> None: ...

    def status(self) -> tuple[int, int]: ...

# clientv3's WithRequireLeader: a member that lost its leader cancels our watch
# ("etcdserver: no leader") instead of leaving it silently stale.
_REQUIRE_LEADER = ("hasleader", "true")

# etcd's Watch method, called as a server-streaming call (``_WatchStream``).
_WATCH_METHOD = "/etcdserverpb.Watch/Watch"


def watch_subnets(store: WatchedStore, next_rev: int, stop: threading.Event | None, progress_interval: float,
                  give_up_after: float, health=None, cluster_id: int = 0,
                  created: Callable[[], None] | None = None) -> Iterator[WatchEvent]:
    """The body of ``EtcdStore.watch()`` (see there), for ``store``."""
    key = store.subnets_prefix
    range_end = pyetcd_utils.prefix_range_end(key.encode())
    closed = store.closed.is_set
    stopped = (lambda: stop.is_set() or closed()) if stop is not None else closed
    heard_at = time.monotonic()  # the last time any endpoint answered us
    backoff = _Backoff()
    reauthed = False
    while not stopped():
        url = store.endpoint_in_use
        label: str | None = None
        stream: _WatchStream | None = None
        try:
            try:
                label, url, channel, metadata = store.open_watch_channel(_REQUIRE_LEADER)
                stream = _WatchStream(channel, metadata, etcdrpc.WatchRequest(
                    create_request=etcdrpc.WatchCreateRequest(key=key.encode(), range_end=range_end,
                                                              start_revision=next_rev)),
                    stopped, store.timeout, progress_interval, heard_at, health)
            except EtcdAuthError:
                raise
            except EtcdError as exc:
                raise _Broken(str(exc)) from exc
            except (grpc.RpcError, pyetcd_exc.Etcd3Exception, ValueError) as exc:
                raise _Broken(str(exc)) from exc

            for item in stream.responses():
                if stopped():
                    return
                heard_at = stream.heard_at
                _check_not_rolled_back(store, item.header, next_rev - 1, cluster_id, url)
                if health is not None:
                    health(True)
                if item.compact_revision:
                    raise EtcdCompacted(
                        f"etcd watch {key} via {url}: revision {next_rev} is compacted "
                        f"(compact revision {item.compact_revision}): re-list", int(item.compact_revision))
                if item.canceled:
                    reason = item.cancel_reason or "canceled by the server"
                    if "permission denied" in reason or "auth" in reason:
                        # An expired token shows up here as "permission denied": one fresh token, then give up.
                        if store.has_credentials and not reauthed:
                            reauthed = True
                            store.renew_token()
                            raise _Broken(reason)
                        raise EtcdAuthError(f"etcd watch {key} via {url}: {reason}")
                    # "no leader" and the like: this member is no use, try another.
                    raise _Broken(reason, hung=True)
                if item.created and not stream.created:
                    stream.created = True
                    backoff.reset()
                    reauthed = False
                    if created is not None:
                        created()
                for ev in item.events:
                    if stopped():
                        return
                    event = _watch_event(ev)
                    yield event
                    next_rev = event.revision + 1
            if stopped():
                return      # also when close() broke the stream: that is no error
            error = stream.ended_by
            if error is None:
                raise _Broken("watch stream closed by the server", hung=True)
            kind = classify(error)
            if kind == TOKEN and store.has_credentials and not reauthed:
                reauthed = True
                store.renew_token()
            elif kind not in (TRANSIENT, LEADER):
                raise store.translate_error("watch", url, error) from error
            raise _Broken(code_details(error)[1], error)
        except _Broken as broken:
            if stopped():
                return
            if health is not None:
                health(False)  # the caller fails static now, not when we give up
            if label is not None and (broken.hung or (
                    broken.error is not None and code_details(broken.error)[0] in FAILOVER_CODES)):
                store.fail_endpoint(label)  # and move on: the next stream goes elsewhere
            if stream is not None:
                heard_at = max(heard_at, stream.heard_at)   # its liveness reads count too
            silent_for = time.monotonic() - heard_at
            if silent_for > give_up_after:
                raise EtcdError(f"etcd watch {key}: no endpoint answered for {silent_for:.0f}s "
                                f"({', '.join(store.endpoints)}); last error via {url}: {broken}") from broken
            log.info("etcd watch via %s broken (%s); resuming from revision %d", url, broken, next_rev)
            (stop if stop is not None else store.closed).wait(backoff.next())
        finally:
            if stream is not None:
                stream.close()


def _check_not_rolled_back(store: WatchedStore, header, seen: int, cluster_id: int, url: str) -> None:
    """Every answer's header carries the member's revision: one lower than a revision we already
    saw means etcd lost history (a wiped data dir, a restored backup), and a watch for the old
    revision would wait forever (etcd accepts a start revision in the future).  A follower
    lagging behind the leader can show a lower revision too, for a moment, so it is confirmed
    with a linearizable read before it is believed (docs/incremental.md, "etcd going back")."""
    if cluster_id and header.cluster_id and int(header.cluster_id) != cluster_id:
        raise EtcdRolledBack(f"etcd via {url} is another cluster now (cluster id {int(header.cluster_id):x}, "
                             f"was {cluster_id:x})", seen, int(header.revision))
    if int(header.revision) >= seen:
        return
    try:
        now, _ = store.status()
    except EtcdError:
        return      # unconfirmed: the stream's own health checks decide what happens next
    if now < seen:
        raise EtcdRolledBack(f"etcd via {url} is at revision {now}, below revision {seen} already seen",
                             seen, now)


# --------------------------------------------------------------------------------------------
# Watch stream plumbing
# --------------------------------------------------------------------------------------------

class _Broken(Exception):
    """Internal: the watch stream is unusable; re-create it (maybe elsewhere)."""

    def __init__(self, message: str, error: BaseException | None = None, *, hung: bool = False) -> None:
        super().__init__(message)
        self.error = error
        self.hung = hung


class _Backoff:
    """100 ms doubling to 2 s, like flanneld's watch reconnect (which caps at 5 s)."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class _WatchStream:
    """One Watch stream, read by the thread that consumes it.

    The stream is opened as a server-streaming call: the create request is its one request
    message, and etcd keeps a watch whose client has half-closed (its receive loop ends, the
    watch goes on until the call does).  On a channel opened with gRPC's
    ``SingleThreadedUnaryStream`` option (``store.py``) such a call is read entirely on the
    consumer's thread: no channel thread hands each answer over, no thread feeds a request
    iterator.  In a storm of 5,000 re-puts that is about a third less CPU for the same answers
    (docs/incremental.md, "The watch stream's threads").

    gRPC's response iterator cannot wait with a timeout, so a watchdog thread keeps the time:
    every 0.2 s it checks ``stopped``, the create answer (within ``timeout``), and silence: after
    ``progress_interval`` without an answer it reads one key of the watched prefix through the
    same channel (the same connection, the same member), which must answer within ``timeout``.
    A stream with no request side cannot carry etcd's progress request; the read proves what the
    probe was for, that the member and the connection are alive (a leaderless member ends the
    watch itself: ``hasleader``); its answer is reported to ``health`` like a stream answer.
    The watchdog ends the stream by cancelling the call; ``broken`` then says why."""

    def __init__(self, channel: grpc.Channel, metadata: list[tuple[str, str]], create: etcdrpc.WatchRequest,
                 stopped: Callable[[], bool], timeout: float, progress_interval: float, heard_at: float,
                 health: Callable[[bool], None] | None = None) -> None:
        self._stopped, self._timeout, self._progress_interval = stopped, timeout, progress_interval
        self._health = health
        #: The last time the member answered (the stream's answers and the probe's move it on).
        self.heard_at = heard_at
        #: The create request was answered (set by the consumer).
        self.created = False
        #: Why the watchdog ended the stream (None: it did not).
        self.broken: _Broken | None = None
        #: The error the call ended with, when it was not the watchdog's doing (None: a clean end).
        self.ended_by: BaseException | None = None
        self._probe: grpc.Future | None = None
        self._probe_sent_at = 0.0
        self._closed = threading.Event()
        self._kv = etcdrpc.KVStub(channel)
        self._metadata = metadata
        self._probe_request = etcdrpc.RangeRequest(key=create.create_request.key,
                                                   range_end=create.create_request.range_end,
                                                   limit=1, keys_only=True)
        # No deadline: the stream is meant to live long; liveness is the watchdog's job.
        watch = channel.unary_stream(_WATCH_METHOD, request_serializer=etcdrpc.WatchRequest.SerializeToString,
                                     response_deserializer=etcdrpc.WatchResponse.FromString)
        self._call = watch(create, metadata=metadata)
        self._dog = threading.Thread(target=self._watchdog, name="etcd-watch-watchdog", daemon=True)
        self._dog.start()

    def responses(self) -> Iterator[etcdrpc.WatchResponse]:
        """The stream's answers, until it ends.  Raises the watchdog's ``_Broken`` when it ended
        the stream; otherwise a server's end is in ``ended_by`` (None for a clean close)."""
        try:
            for response in self._call:
                self.heard_at = time.monotonic()
                yield response
        except grpc.RpcError as exc:
            if self.broken is not None:
                raise self.broken from None
            self.ended_by = exc
        except Exception as exc:    # never let a surprise pass as a clean end
            self.ended_by = exc
        if self.broken is not None:
            raise self.broken

    def _watchdog(self) -> None:
        opened_at = time.monotonic()
        while not self._closed.wait(0.2):
            if self._stopped():
                self._call.cancel()
                return
            why = self._why_broken(time.monotonic(), opened_at)
            if why is not None:
                self.broken = _Broken(why, hung=True)
                self._call.cancel()
                return

    def _why_broken(self, now: float, opened_at: float) -> str | None:
        """The watchdog's verdict at ``now``: None while the stream is alive (or still
        being checked); sends the liveness probe when the stream has been silent too long."""
        if not self.created:
            if now - opened_at > self._timeout:
                return f"watch create: no answer within {self._timeout:g}s"
            return None
        probe = self._probe
        if probe is not None:
            if not probe.done():
                if now - self._probe_sent_at > self._timeout:
                    probe.cancel()
                    return f"watch: no answer to a liveness read within {self._timeout:g}s"
                return None
            self._probe = None
            error = probe.exception()
            if error is not None and code_details(error)[0] in FAILOVER_CODES:
                return f"watch: liveness read failed: {code_details(error)[1]}"
            # Any other answer, a refusal too (an expired token), is the member speaking.
            self.heard_at = max(self.heard_at, self._probe_sent_at)
            if self._health is not None:
                self._health(True)      # etcd answered, as any answer on the stream says
            log.debug("etcd watch: silent for %gs; the member answered a liveness read", self._progress_interval)
        elif now - self.heard_at >= self._progress_interval:
            self._probe_sent_at = now
            self._probe = self._kv.Range.future(self._probe_request, timeout=self._timeout + 1.0,
                                                metadata=self._metadata)
        return None

    def close(self) -> None:
        self._closed.set()
        self._call.cancel()        # ends the response iterator
        if self._probe is not None:
            self._probe.cancel()
        if self._dog is not threading.current_thread():
            self._dog.join(timeout=2.0)


def _watch_event(ev: Any) -> WatchEvent:
    kv = ev.kv
    if ev.type == kv_pb2.Event.PUT:
        return WatchEvent("put", raw_kv(kv), int(kv.mod_revision))
    return WatchEvent("delete", RawKV(key=kv.key.decode("utf-8", "replace"), value="", lease=0,
                                      mod_revision=int(kv.mod_revision)), int(kv.mod_revision))
