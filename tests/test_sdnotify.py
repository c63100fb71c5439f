"""sd_notify: the message bytes, the socket address forms, and the real agent under a fake systemd.

The end-to-end test plays systemd's part: it binds an ``AF_UNIX`` datagram
socket, starts the real agent (``python -m reconciler run``) in a node
namespace with ``NOTIFY_SOCKET`` pointing at it, and reads what arrives.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import ExitStack

import pytest

from reconciler.agent.sdnotify import Notifier, format_message, socket_address, watchdog_interval


# ------------------------------------------------------------------ pure parts

def test_a_message_is_one_key_value_line_per_field_in_order():
    assert format_message(READY=1, STATUS="ready: 3 leases") == b"READY=1\nSTATUS=ready: 3 leases"
    # A newline in a value cannot smuggle in another field.
    assert format_message(STATUS="a\nREADY=1") == b"STATUS=a READY=1"


def test_socket_addresses_path_abstract_and_unsupported():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify") == b"\0/org/freedesktop/systemd1/notify"
    assert socket_address(None) is None
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def _receiver(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    return s


def test_notifier_sends_to_a_path_socket_and_without_one_does_nothing():
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        path = os.path.join(d, "notify")
        with _receiver(path) as rx:
            n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
            assert n.enabled and n.watchdog == 1.0
            n.ready("ready: subnet 100.64.1.0/24")
            n.ready("ready again")          # READY=1 only once; later calls only update STATUS
            n.ping()
            n.stopping()
            got = [rx.recv(4096) for _ in range(4)]
    assert got == [b"READY=1\nSTATUS=ready: subnet 100.64.1.0/24", b"STATUS=ready again", b"WATCHDOG=1",
                   b"STOPPING=1\nSTATUS=stopping; kernel state left in place"]
    off = Notifier({})
    assert not off.enabled and off.watchdog is None
    assert off.notify(READY=1) is False
    off.ping()                              # nothing to send to, nothing raised


def test_notifier_reaches_an_abstract_socket():
    name = f"@frt-sdnotify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(b"\0" + name[1:].encode())
        rx.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": name}).notify(READY=1)
        assert rx.recv(4096) == b"READY=1"


def test_a_vanished_socket_is_logged_not_raised(caplog):
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent-dir/notify"})
    assert n.notify(READY=1) is False
    assert "sd_notify to /nonexistent-dir/notify failed" in caplog.text


# ------------------------------------------------------------- the real agent

@pytest.mark.root
@pytest.mark.etcd
def test_the_agent_says_ready_after_subnet_env_then_watchdog_then_stopping(etcd_server, tmp_path, monkeypatch):
    from reconciler.tools.demo import AgentProcess
    from reconciler.etcd.store import EtcdStore
    from tests.conftest_netns import require_root
    from tests.netns import underlay

    require_root()
    config = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
    with EtcdStore([etcd_server.endpoint], timeout=3.0) as store:
        store.put_config(config)
    sockdir = tempfile.mkdtemp(prefix="frt-sdn-")   # short: sun_path holds 108 bytes
    path = os.path.join(sockdir, "notify")
    with ExitStack() as stack:
        stack.callback(os.rmdir, sockdir)
        stack.callback(lambda: os.path.exists(path) and os.unlink(path))
        rx = stack.enter_context(_receiver(path))
        node = stack.enter_context(underlay(1)).nodes[0]
        # The child inherits the environment (reconciler.tools.demo.child_env).
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")        # a ping at least every 0.2 s
        agent = AgentProcess(node.ns, tmp_path / "agent", ["--etcd-endpoints", etcd_server.endpoint],
                             resync_interval=30)
        stack.callback(agent.stop)
        agent.start()

        received: list[tuple[bytes, bool]] = []          # (message, subnet.env existed on arrival)
        deadline = time.monotonic() + 30
        while not any(m.startswith(b"READY=1") for m, _ in received):
            assert time.monotonic() < deadline and agent.alive, f"no READY=1; got {received}\n{agent.log_tail()}"
            try:
                msg = rx.recv(4096)
            except TimeoutError:
                continue
            received.append((msg, agent.subnet_file.exists()))
        ready = [(m, existed) for m, existed in received if m.startswith(b"READY=1")]
        assert len(ready) == 1 and ready[0][1], "READY=1 arrived before subnet.env was written"
        assert b"\nSTATUS=ready: subnet 100.64." in ready[0][0]
        assert agent.ready()                                 # and /readyz agrees

        # The loop pings the watchdog while it waits (the resync is 30 s away).
        pings = 0
        while pings < 3:
            assert time.monotonic() < deadline, f"too few WATCHDOG=1 pings\n{agent.log_tail()}"
            if rx.recv(4096) == b"WATCHDOG=1":
                pings += 1

        assert agent.stop() == 0
        rx.settimeout(0.5)                                   # the agent has exited: drain what it sent
        rest = []
        try:
            while True:
                rest.append(rx.recv(4096))
        except TimeoutError:
            pass
        stopping = [m for m in rest if m.startswith(b"STOPPING=1")]
        assert stopping == [b"STOPPING=1\nSTATUS=stopping; kernel state left in place"], rest


@pytest.mark.root
@pytest.mark.etcd
def test_sighup_resyncs_at_once_and_the_agent_runs_on(etcd_server, tmp_path, monkeypatch):
    """SIGHUP (``systemctl reload``'s usual signal) is a resync now: logged, a full dump, no exit
    and no STOPPING=1; SIGTERM afterwards still stops it with STOPPING=1."""
    import signal

    from reconciler.etcd.store import EtcdStore
    from reconciler.tools.demo import AgentProcess
    from tests.conftest_netns import require_root
    from tests.netns import underlay

    require_root()
    config = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
    with EtcdStore([etcd_server.endpoint], timeout=3.0) as store:
        store.put_config(config)
    sockdir = tempfile.mkdtemp(prefix="frt-sdn-")
    path = os.path.join(sockdir, "notify")
    with ExitStack() as stack:
        stack.callback(os.rmdir, sockdir)
        stack.callback(lambda: os.path.exists(path) and os.unlink(path))
        rx = stack.enter_context(_receiver(path))
        node = stack.enter_context(underlay(1)).nodes[0]
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        agent = AgentProcess(node.ns, tmp_path / "agent", ["--etcd-endpoints", etcd_server.endpoint],
                             resync_interval=3600)          # no resync from the timer during the test
        stack.callback(agent.stop)
        agent.start()
        agent.wait_ready()

        def resyncs() -> tuple[float, float]:
            return (agent.metric("flannel_reconciler_cycles_total", trigger="resync", outcome="ok"),
                    agent.metric("flannel_reconciler_dumps_total"))

        before = resyncs()
        assert before[0] >= 1                               # the first full sync
        os.kill(agent.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            assert agent.alive, f"SIGHUP killed the agent (status {agent.proc.returncode})\n{agent.log_tail()}"
            now = resyncs()[0]
            if now is not None and now >= before[0] + 1:     # None: /metrics did not answer
                break
            assert time.monotonic() < deadline, f"no resync after SIGHUP\n{agent.log_tail()}"
            time.sleep(0.05)
        assert resyncs()[1] == before[1] + 1                # one full dump, and the agent runs on
        assert "SIGHUP: resyncing now" in agent.log()
        assert agent.alive and agent.get("/healthz")[0] == 200

        assert agent.stop() == 0
        rx.settimeout(0.5)
        got = []
        try:
            while True:
                got.append(rx.recv(4096))
        except TimeoutError:
            pass
        assert [m for m in got if m.startswith(b"STOPPING=1")] == [
            b"STOPPING=1\nSTATUS=stopping; kernel state left in place"], got
        assert "signal 15 (SIGTERM): stopping" in agent.log()
