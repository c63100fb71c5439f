"""EtcdStore against real etcd servers on 127.0.0.1: reads, CAS writes, leases,
the watch through restarts and compaction, a 3-member cluster, TLS and auth."""
from __future__ import annotations

import threading
import time

import pytest

from reconciler.core.errors import EtcdAuthError, EtcdCompacted, EtcdError, EtcdRolledBack
from reconciler.etcd.store import EtcdLeaseNotFound, EtcdStore, WatchEvent
from reconciler.core.leases import RawKV
from tests.etcd_server import EtcdServer, enable_auth, free_port

pytestmark = pytest.mark.etcd

CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def take(events, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    """The next ``n`` events from a watch iterator, read in a thread so a hang fails the test."""
    out: list[WatchEvent] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(n):
                out.append(next(events))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if errors:
        raise errors[0]
    assert not t.is_alive(), f"watch delivered {len(out)} of {n} events in {timeout}s"
    return out


# --------------------------------------------------------------------------------------------
# Reads and writes
# --------------------------------------------------------------------------------------------

def test_config_round_trip_and_missing(etcd_store):
    assert etcd_store.get_config() is None
    etcd_store.put_config(CONFIG)
    assert etcd_store.get_config() == CONFIG
    assert etcd_store.config_key.endswith("/coreos.com/network/config")


def test_prefix_is_cleaned_like_path_join(etcd_shared, etcd_prefix):
    with EtcdStore([etcd_shared.endpoint], prefix=etcd_prefix + "//") as store:
        assert store.prefix == etcd_prefix
        assert store.subnets_prefix == etcd_prefix + "/subnets/"


def test_snapshot_is_one_revision(etcd_store):
    sub = etcd_store.subnets_prefix
    etcd_store.put_config(CONFIG)
    lease = etcd_store.grant(600)
    etcd_store.put(sub + "10.244.1.0-24", "a", lease)
    rev = etcd_store.put(sub + "10.244.2.0-24", "b")
    etcd_store.put(etcd_store.prefix + "x/not-ours", "outside")  # a sibling prefix is not ours
    snap = etcd_store.snapshot()
    assert snap.prefix == etcd_store.prefix
    assert snap.revision >= rev
    assert snap.kvs == (
        RawKV(etcd_store.config_key, CONFIG, 0, snap.kvs[0].mod_revision),
        RawKV(sub + "10.244.1.0-24", "a", lease, rev - 1),
        RawKV(sub + "10.244.2.0-24", "b", 0, rev),
    )


def test_snapshot_never_sees_half_a_transaction(etcd_store):
    """Two keys always written together (one txn) are always read together:
    the snapshot is one range at one revision, not a read per key."""
    from pyetcd import transactions as t  # test-only: drive an atomic two-key write

    sub = etcd_store.subnets_prefix
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            etcd_store._client.transaction(compare=[], success=[t.Put(sub + "a", str(n)), t.Put(sub + "b", str(n))],
                                           failure=[])

    th = threading.Thread(target=writer)
    th.start()
    try:
        revisions = []
        for _ in range(100):
            snap = etcd_store.snapshot()
            values = {kv.key: kv.value for kv in snap.kvs}
            if values:
                assert values[sub + "a"] == values[sub + "b"]
                assert all(kv.mod_revision <= snap.revision for kv in snap.kvs)
            revisions.append(snap.revision)
    finally:
        stop.set()
        th.join()
    assert revisions == sorted(revisions) and revisions[-1] > revisions[0]


def test_compare_and_set_writes(etcd_store):
    key = etcd_store.subnets_prefix + "10.244.5.0-24"
    lease = etcd_store.grant(600)
    assert etcd_store.create_if_absent(key, "mine", lease) is True
    assert etcd_store.create_if_absent(key, "theirs", 0) is False
    assert etcd_store.get(key) == RawKV(key, "mine", lease, etcd_store.get(key).mod_revision)
    assert etcd_store.put_if_value(key, "not what is there", "x", 0) is False
    assert etcd_store.put_if_value(key, "mine", "mine2", lease) is True
    assert etcd_store.get(key).value == "mine2"
    assert etcd_store.delete_if_value(key, "mine") is False
    assert etcd_store.delete_if_value(key, "mine2") is True
    assert etcd_store.get(key) is None
    # A compare on a missing key fails: a vanished key is never resurrected by put_if_value.
    assert etcd_store.put_if_value(key, "", "x", 0) is False
    assert etcd_store.get(key) is None
    assert etcd_store.delete(key) is False


def test_lease_operations(etcd_store):
    key = etcd_store.subnets_prefix + "10.244.6.0-24"
    lease = etcd_store.grant(86400)
    assert 86390 <= etcd_store.time_to_live(lease) <= 86400
    assert etcd_store.refresh(lease) == 86400
    etcd_store.put(key, "v", lease)
    etcd_store.revoke(lease)
    assert etcd_store.get(key) is None                    # revoking deletes the attached key
    assert etcd_store.time_to_live(lease) == -1
    with pytest.raises(EtcdLeaseNotFound) as err:
        etcd_store.refresh(lease)
    assert err.value.lease_id == lease
    with pytest.raises(EtcdLeaseNotFound):                # gRPC NOT_FOUND, translated
        etcd_store.put(key, "v", lease)
    with pytest.raises(EtcdLeaseNotFound):
        etcd_store.create_if_absent(key, "v", lease)
    with pytest.raises(EtcdLeaseNotFound):
        etcd_store.revoke(lease)
    assert etcd_store.time_to_live(0) == -1               # a reservation's "lease"


# --------------------------------------------------------------------------------------------
# Watch
# --------------------------------------------------------------------------------------------

def test_watch_put_and_delete(etcd_store):
    sub = etcd_store.subnets_prefix
    start = etcd_store.snapshot().revision + 1
    lease = etcd_store.grant(600)
    r1 = etcd_store.put(sub + "10.244.1.0-24", "one", lease)
    etcd_store.put_config(CONFIG)                      # not under subnets/: not reported
    r2 = etcd_store.put(sub + "10.244.1.0-24", "one-b", lease)
    etcd_store.delete(sub + "10.244.1.0-24")
    stop = threading.Event()
    events = etcd_store.watch(start, stop)
    got = take(events, 3)
    assert [(e.type, e.kv.key, e.kv.value, e.kv.lease) for e in got] == [
        ("put", sub + "10.244.1.0-24", "one", lease),
        ("put", sub + "10.244.1.0-24", "one-b", lease),
        ("delete", sub + "10.244.1.0-24", "", 0),
    ]
    assert [got[0].revision, got[1].revision] == [r1, r2]
    assert got[2].revision == got[2].kv.mod_revision > r2
    # stop ends the iterator (how soon: benchmarks/bench_etcd.py)
    stop.set()
    assert list(events) == []


def test_watch_stop_while_idle(etcd_store):
    stop = threading.Event()
    events = etcd_store.watch(etcd_store.snapshot().revision + 1, stop)
    threading.Timer(0.3, stop.set).start()
    assert list(events) == []


def test_closing_the_store_ends_its_watch(etcd_shared, etcd_prefix):
    store = EtcdStore([etcd_shared.endpoint], prefix=etcd_prefix)
    events = store.watch(store.snapshot().revision + 1)
    threading.Timer(0.3, store.close).start()
    with pytest.raises(StopIteration):      # ends quietly: no event, no error
        take(events, 1, timeout=3.0)


def test_watch_resumes_after_etcd_restart(etcd_server):
    with EtcdStore([etcd_server.endpoint], timeout=2.0) as store, \
            EtcdStore([etcd_server.endpoint], timeout=2.0) as other:
        sub = store.subnets_prefix
        events = store.watch(store.snapshot().revision + 1, progress_interval=1.0)
        store.put(sub + "10.244.1.0-24", "before")
        [first] = take(events, 1)
        assert first.kv.value == "before"

        etcd_server.kill()                         # SIGKILL: the watch stream dies with it
        etcd_server.spawn()                        # same data dir, same ports
        etcd_server.wait_healthy()
        # Written while our watch is down (it only reconnects when next pulled).
        other.put(sub + "10.244.2.0-24", "while-down")
        other.delete(sub + "10.244.1.0-24")

        got = take(events, 2, timeout=15)
        assert [(e.type, e.kv.key, e.kv.value) for e in got] == [
            ("put", sub + "10.244.2.0-24", "while-down"),
            ("delete", sub + "10.244.1.0-24", ""),
        ]
        assert got[0].revision == first.revision + 1   # nothing lost, nothing repeated
        events.close()


def test_a_quiet_watch_is_probed_and_kept(etcd_shared, etcd_prefix, caplog):
    # Silence is not a fault: after each progress_interval of it the member answers a
    # liveness read on the watch's connection, and the stream lives on (no re-create).
    caplog.set_level("DEBUG", logger="reconciler.etcd.store")
    with EtcdStore([etcd_shared.endpoint], prefix=etcd_prefix, timeout=1.0) as store:
        events = store.watch(store.snapshot().revision + 1, progress_interval=0.3)
        threading.Timer(1.5, store.put, (store.subnets_prefix + "10.244.1.0-24", "late")).start()
        [ev] = take(events, 1, timeout=10)
        events.close()
    assert ev.kv.value == "late"
    said = [r.getMessage() for r in caplog.records]
    assert sum("answered a liveness read" in m for m in said) >= 2, said
    assert not [m for m in said if "broken" in m], said


def test_watch_detects_a_hung_server_and_gives_up_bounded(etcd_server):
    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        events = store.watch(store.snapshot().revision + 1, progress_interval=0.5, give_up_after=3.0)
        store.put(store.subnets_prefix + "10.244.1.0-24", "x")
        take(events, 1)
        etcd_server.pause()                        # SIGSTOP: sockets stay open, nothing answers
        try:
            with pytest.raises(EtcdError) as err:
                take(events, 1, timeout=15)
        finally:
            etcd_server.resume()
        assert not isinstance(err.value, EtcdAuthError)
        assert "no endpoint answered" in str(err.value)     # how soon: benchmarks/bench_etcd.py


def test_watch_compacted_revision(etcd_server):
    with EtcdStore([etcd_server.endpoint], timeout=2.0) as store:
        sub = store.subnets_prefix
        for i in range(5):
            rev = store.put(sub + "10.244.1.0-24", str(i))
        etcd_server.ctl("compact", str(rev))
        with pytest.raises(EtcdCompacted) as err:
            take(store.watch(2), 1)
        assert err.value.compact_revision == rev
        # From the compaction revision on, the watch works.
        store.put(sub + "10.244.1.0-24", "after")
        [ev] = take(store.watch(rev + 1), 1)
        assert ev.kv.value == "after"


def test_watch_from_a_revision_etcd_never_reached_says_history_went_back(etcd_store):
    """etcd accepts a watch from a future revision and waits; after a wipe that is a revision it
    had once: the watch must say so instead of waiting forever."""
    snap = etcd_store.snapshot()
    assert snap.cluster_id != 0
    assert etcd_store.status() == (snap.revision, snap.cluster_id)
    with pytest.raises(EtcdRolledBack) as err:
        take(etcd_store.watch(snap.revision + 1000), 1)
    assert (err.value.seen, err.value.now) == (snap.revision + 999, snap.revision)
    # Another cluster id than the one first listed: not the etcd we knew.
    with pytest.raises(EtcdRolledBack, match="another cluster"):
        take(etcd_store.watch(snap.revision + 1, cluster_id=snap.cluster_id ^ 1), 1)
    # The revision we know and the right cluster: an ordinary watch.
    rev = etcd_store.put(etcd_store.subnets_prefix + "10.244.1.0-24", "x")
    [ev] = take(etcd_store.watch(snap.revision + 1, cluster_id=snap.cluster_id), 1)
    assert ev.revision == rev


def test_keys_carry_their_create_revision(etcd_store):
    key = etcd_store.subnets_prefix + "10.244.1.0-24"
    created = etcd_store.put(key, "a")
    etcd_store.put(key, "b")
    assert etcd_store.get(key).create_revision == created
    etcd_store.delete(key)
    again = etcd_store.put(key, "c")
    assert etcd_store.get(key).create_revision == again > created


# --------------------------------------------------------------------------------------------
# Failures: unreachable, hung, cluster failover
# --------------------------------------------------------------------------------------------

def test_unreachable_endpoint_fails_fast_and_names_it():
    url = f"http://127.0.0.1:{free_port()}"          # nothing listens there
    with EtcdStore([url], timeout=1.0) as store:
        with pytest.raises(EtcdError) as err:
            store.snapshot()
        assert url in str(err.value) or "no endpoint answered" in str(err.value)
        assert not isinstance(err.value, EtcdAuthError)
        with pytest.raises(EtcdError):
            next(store.watch(1, give_up_after=1.0))


def test_hung_server_call_times_out(etcd_server):
    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        etcd_server.pause()
        try:
            with pytest.raises(EtcdError, match="no answer within 1s|no endpoint answered"):
                store.get_config()
        finally:
            etcd_server.resume()
        assert store.get_config() == CONFIG           # and it recovers


@pytest.mark.parametrize("victim", ["member-in-use", "leader"])
def test_cluster_failover_when_a_member_dies(etcd_cluster, victim):
    with EtcdStore(etcd_cluster.endpoints, timeout=2.0) as store:
        sub = store.subnets_prefix
        lease = store.grant(600)
        store.put(sub + "10.244.1.0-24", "a", lease)
        events = store.watch(store.snapshot().revision, progress_interval=1.0)
        assert take(events, 1)[0].kv.value == "a"

        in_use = store.endpoint_in_use
        dead = etcd_cluster.member_for(in_use) if victim == "member-in-use" else etcd_cluster.leader()
        dead.kill()
        # Every call goes on: one that meets the dead member, or a follower still
        # forwarding to a dead leader, is retried on another member.
        store.put(sub + "10.244.2.0-24", "b")
        assert store.endpoint_in_use != dead.endpoint
        assert store.refresh(lease) == 600
        assert {kv.value for kv in store.snapshot().kvs} == {"a", "b"}
        assert store.create_if_absent(sub + "10.244.3.0-24", "c", lease)
        # The watch moves too, and misses nothing.
        assert [e.kv.value for e in take(events, 2, timeout=15)] == ["b", "c"]
        events.close()


# --------------------------------------------------------------------------------------------
# TLS and auth
# --------------------------------------------------------------------------------------------

def test_tls_with_client_certificates(etcd_tls):
    server, pki = etcd_tls
    with EtcdStore([server.endpoint], ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                   key_file=str(pki.client_key), timeout=2.0) as store:
        store.put_config(CONFIG)
        assert store.get_config() == CONFIG
        store.put(store.subnets_prefix + "10.244.1.0-24", "tls")
        [ev] = take(store.watch(1), 1)
        assert ev.kv.value == "tls"


@pytest.mark.parametrize("case", ["rogue-client-cert", "rogue-ca", "no-client-cert", "plain-http"])
def test_tls_wrong_credentials_are_clear_errors(etcd_tls, case):
    server, pki = etcd_tls
    kwargs = dict(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    url = server.endpoint
    if case == "rogue-client-cert":
        kwargs.update(cert_file=str(pki.rogue_cert), key_file=str(pki.rogue_key))
    elif case == "rogue-ca":
        kwargs.update(ca_file=str(pki.rogue_ca))
    elif case == "no-client-cert":
        kwargs = dict(ca_file=str(pki.ca))
    else:
        url = url.replace("https://", "http://")
        kwargs = {}
    with EtcdStore([url], timeout=2.0, **kwargs) as store:
        with pytest.raises(EtcdError) as err:
            store.get_config()
    text = str(err.value)
    assert url in text
    if case == "rogue-ca":                       # we reject the server: certificate verification
        assert isinstance(err.value, EtcdAuthError) and "TLS" in text
    elif case == "plain-http":                   # the server just hangs up: unavailable
        assert "unavailable" in text
    else:
        # The server rejects our certificate (or its absence).  gRPC reports it
        # either as a TLS alert (an auth error) or as a closed socket, depending
        # on timing; the message points at TLS either way.
        assert isinstance(err.value, EtcdAuthError) or ("unavailable" in text and "TLS" in text), text


def test_tls_unreadable_files_are_auth_errors(tmp_path):
    with pytest.raises(EtcdAuthError, match="cannot read"):
        EtcdStore(["https://127.0.0.1:1"], ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(EtcdAuthError, match="together"):
        EtcdStore(["https://127.0.0.1:1"], cert_file=str(tmp_path / "c.pem"))


def test_username_password_auth(etcd_auth):
    server, creds = etcd_auth
    with EtcdStore([server.endpoint], username=creds["user"], password=creds["password"], timeout=2.0) as store:
        store.put_config(CONFIG)
        assert store.get_config() == CONFIG
        lease = store.grant(60)
        assert store.create_if_absent(store.subnets_prefix + "10.244.1.0-24", "v", lease)
        [ev] = take(store.watch(1), 1)
        assert ev.kv.value == "v"
        # The user may touch its prefix only.
        with EtcdStore([server.endpoint], prefix="/elsewhere", username=creds["user"],
                       password=creds["password"], timeout=2.0) as outside:
            with pytest.raises(EtcdAuthError, match="permission denied"):
                outside.snapshot()
            with pytest.raises(EtcdAuthError, match="permission denied"):
                take(outside.watch(1), 1)


def test_wrong_password_and_no_credentials(etcd_auth):
    server, creds = etcd_auth
    with EtcdStore([server.endpoint], username=creds["user"], password="wrong", timeout=2.0) as store:
        with pytest.raises(EtcdAuthError, match="invalid user ID or password"):
            store.snapshot()
        with pytest.raises(EtcdAuthError):
            next(store.watch(1))
    with EtcdStore([server.endpoint], timeout=2.0) as anonymous:
        with pytest.raises(EtcdAuthError, match="user name is empty"):
            anonymous.get_config()


def test_expired_token_is_renewed_transparently():
    """Simple tokens expire (--auth-token-ttl, 300 s by default); pyetcd would
    keep sending the dead one.  Here: TTL 1 s, idle 2.5 s, calls still work."""
    from tests.conftest_etcd import require_etcd

    require_etcd()
    with EtcdServer(extra_args=["--auth-token-ttl", "1"]) as server:
        creds = enable_auth(server)
        with EtcdStore([server.endpoint], username=creds["user"], password=creds["password"],
                       timeout=2.0) as store:
            store.put_config("one")
            time.sleep(2.5)   # real time: the 1 s auth token must expire on etcd's own clock
            store.put_config("two")
            assert store.get_config() == "two"


def test_auth_credentials_against_a_server_without_auth(etcd_store, etcd_shared, etcd_prefix):
    # clientv3 carries on without a token when auth is off; so do we.
    with EtcdStore([etcd_shared.endpoint], prefix=etcd_prefix, username="u", password="p") as store:
        store.put_config(CONFIG)
        assert store.get_config() == CONFIG


def test_bad_endpoint_urls():
    with pytest.raises(EtcdError):
        EtcdStore(["unix:///var/run/etcd.sock"])
    with pytest.raises(EtcdError):
        EtcdStore([])
    store = EtcdStore(["127.0.0.1:2379", "https://[::1]:2379"])  # no I/O in the constructor
    assert store.endpoints == ("http://127.0.0.1:2379", "https://[::1]:2379")
    store.close()
