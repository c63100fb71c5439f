"""The agent loop against a real etcd and the model kernel.

Each test is one situation an operator meets.  The kernel is the in-memory
ModelKernel (the real-kernel, multi-node versions are in test_agent_e2e.py),
so these run without root but with a real etcd server.
"""
from __future__ import annotations

import math
import re
import socket
import threading
import time
import urllib.request

import pytest

from reconciler.agent.daemon import Agent, AgentOptions
from reconciler.core.leases import encode_lease_value
from reconciler.core.model import Link, Route
from tests.agent_harness import cycles_done
from tests.model_kernel import ModelKernel

# The agent allocates its own subnet from 100.64.100.0 up, so it never collides with the
# peers and stale routes the tests write by hand below that (leases outside SubnetMin/Max
# are still valid peers).
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"SubnetMin":"100.64.100.0","Backend":{"Type":"vxlan"}}'
ME = "198.18.0.1"
MAC2, MAC3, MAC4 = "0a:58:64:40:02:00", "0a:58:64:40:03:00", "0a:58:64:40:04:00"


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def node_kernel() -> ModelKernel:
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", f"{ME}/24")
    return k


def put_peer(store, subnet: str, ip: str, mac: str) -> str:
    key = f"{store.subnets_prefix}{subnet}"
    store.put(key, encode_lease_value(ip, mac, 1), store.grant(600))
    return key


def routes(kernel: ModelKernel) -> dict[str, Route]:
    return {r.dst: r for r in kernel.dump(["flannel.1"]).of("route").values() if r.dev == "flannel.1"}


class Running:
    """An agent on its own thread; stopped (and joined) by the test's cleanup."""

    def __init__(self, store, kernel, tmp_path, **opts):
        self.kernel = kernel
        self.stop = threading.Event()
        opts = {"resync_interval": 0.3, "coalesce": 0.01, **opts}
        self.opts = AgentOptions(iface="eth0", subnet_file=str(tmp_path / "subnet.env"), **opts)
        self.agent = Agent(store, kernel, self.opts)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.agent.run(self.stop)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def resyncs(self, n: int, timeout: float = 30.0) -> None:
        """Return once ``n`` more resync cycles have run (the agent's own count of them)."""
        start = cycles_done(self.agent.metrics.render())
        wait_for(lambda: cycles_done(self.agent.metrics.render()) >= start + n, timeout=timeout,
                 what=f"{n} resync cycles")

    def ready(self, timeout=15.0):
        wait_for(lambda: self.agent.state.ready or self.error, timeout, "agent ready")
        assert self.error is None, self.error

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "agent did not stop"
        assert self.error is None, self.error


@pytest.fixture
def start_agent(tmp_path):
    running = []

    def start(store, kernel, **opts):
        r = Running(store, kernel, tmp_path, **opts)
        running.append(r)
        return r

    yield start
    for r in running:
        r.close()


def test_agent_publishes_flannel_lease_and_programs_peers(etcd_store, start_agent, tmp_path):
    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    put_peer(store, "100.64.3.0-24", "198.18.0.3", MAC3)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()

    mine = [kv for kv in store.snapshot().kvs if ME in kv.value]
    assert len(mine) == 1
    vtep = kernel.dump(["flannel.1"]).get("link", "flannel.1")
    assert mine[0].value == encode_lease_value(ME, vtep.mac, 1)  # flanneld's exact bytes
    assert mine[0].lease != 0 and store.time_to_live(mine[0].lease) > 86000
    subnet = mine[0].key.rsplit("/", 1)[1].replace("-", "/")
    assert set(routes(kernel)) == {"100.64.2.0/24", "100.64.3.0/24"}
    env = (tmp_path / "subnet.env").read_text()
    first_host = subnet.split("/")[0].rsplit(".", 1)[0] + ".1/24"
    assert env == f"FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET={first_host}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"


def test_agent_follows_peers_joining_leaving_and_rebooting(etcd_store, start_agent):
    store = etcd_store
    store.put_config(CONFIG)
    key2 = put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    put_peer(store, "100.64.3.0-24", "198.18.0.3", MAC3)
    kernel = node_kernel()
    start_agent(store, kernel).ready()

    put_peer(store, "100.64.4.0-24", "198.18.0.4", MAC4)
    wait_for(lambda: "100.64.4.0/24" in routes(kernel), what="route to the new peer")

    store.delete(key2)
    wait_for(lambda: "100.64.2.0/24" not in routes(kernel), what="route of the peer that left removed")
    live = kernel.dump(["flannel.1"])
    assert live.get("neigh", ("flannel.1", "100.64.2.0")) is None
    assert live.get("fdb", ("flannel.1", MAC2)) is None

    new_mac = "0a:58:64:40:03:99"
    put_peer(store, "100.64.3.0-24", "198.18.0.3", new_mac)  # peer 3 rebooted
    wait_for(lambda: kernel.dump(["flannel.1"]).get("fdb", ("flannel.1", MAC3)) is None, what="old FDB entry gone")
    live = kernel.dump(["flannel.1"])
    assert live.get("neigh", ("flannel.1", "100.64.3.0")).mac == new_mac
    assert live.get("fdb", ("flannel.1", new_mac)).dst == "198.18.0.3"


def test_resync_repairs_drift_nobody_reported(etcd_store, start_agent):
    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    with kernel._rtnl:
        kernel.routes = {k: r for k, r in kernel.routes.items() if r.dst != "100.64.2.0/24"}
    wait_for(lambda: "100.64.2.0/24" in routes(kernel), what="route restored by resync")
    assert agent.agent.metrics.get("flannel_reconciler_drift_repaired_total") >= 1


def test_malformed_lease_is_reported_and_the_rest_still_programmed(etcd_store, start_agent):
    store = etcd_store
    store.put_config(CONFIG)
    store.put(f"{store.subnets_prefix}100.64.9.0-24", "{this is not json")
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    wait_for(lambda: "100.64.2.0/24" in routes(kernel), what="good peer programmed")
    skipped = agent.agent.last_cycle.skipped
    assert [s.key for s in skipped] == [f"{store.subnets_prefix}100.64.9.0-24"]
    assert agent.agent.metrics.get("flannel_reconciler_leases_skipped", reason="bad-value") == 1


def test_own_key_deleted_is_reacquired_and_kernel_left_alone(etcd_store, start_agent):
    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    own = agent.agent.keeper.current
    ifindex = kernel.ifindex("flannel.1")
    store.delete(own.key)
    wait_for(lambda: store.get(own.key) is not None, what="own lease re-acquired")
    assert store.get(own.key).value == own.value  # same subnet, same bytes
    assert kernel.ifindex("flannel.1") == ifindex  # the device was never torn down
    assert "100.64.2.0/24" in routes(kernel)


def test_fail_static_while_etcd_is_down(etcd_server, start_agent):
    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
        kernel = node_kernel()
        agent = start_agent(store, kernel)
        agent.ready()
        etcd_server.stop()
        # While etcd is away: a stale owned route appears and a desired one vanishes.
        kernel.add_route(Route("100.64.77.0/24", "100.64.77.0", "flannel.1", True, 0, 73))
        with kernel._rtnl:
            kernel.routes = {k: r for k, r in kernel.routes.items() if r.dst != "100.64.2.0/24"}
        wait_for(lambda: "100.64.2.0/24" in routes(kernel), what="repair while etcd is down")
        wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_etcd_up") == 0, what="etcd marked down")
        agent.resyncs(2)
        assert "100.64.77.0/24" in routes(kernel), "deleted something while failing static"
        assert agent.agent.http.healthz()[0] == 200

        etcd_server.start()
        wait_for(lambda: "100.64.77.0/24" not in routes(kernel), timeout=30, what="stale route removed once etcd is back")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of an HTTP GET on 127.0.0.1."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _scrape_when_up(port: int) -> dict[str, float]:
    """``scrape``, or {} while the agent's thread has not bound its port yet."""
    try:
        return scrape(port)
    except urllib.error.URLError:
        return {}


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` read by prometheus_client's parser: ``name{sorted labels}`` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, ctype, text = _get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    return {s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" if s.labels else ""):
            s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_health_ready_and_metrics_endpoints(etcd_store, start_agent):
    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    port = _free_port()
    agent = start_agent(store, node_kernel(), healthz_ip="127.0.0.1", healthz_port=port, metrics_port=port)
    agent.ready()

    def get(path):
        status, _, body = _get(port, path)
        return status, body

    wait_for(lambda: get("/healthz")[0] == 200 and agent.agent.state.last_cycle_end, what="healthz")
    assert get("/readyz") == (200, "flannel-reconciler is ready\n")
    m = scrape(port)
    assert m["flannel_reconciler_ready"] == 1 and m["flannel_reconciler_leases"] == 2
    assert m["flannel_reconciler_cycle_duration_seconds_count"] >= 1
    assert m['flannel_reconciler_operations_total{kind="route",op="create",result="ok"}'] >= 1
    assert m["flannel_reconciler_last_successful_sync_timestamp_seconds"] > 0
    assert m["process_resident_memory_bytes"] > 0 and m["process_cpu_seconds_total"] > 0
    assert get("/nope")[0] == 404
    # A stalled loop turns /healthz red.
    agent.agent.state.last_cycle_end -= 10_000
    assert get("/healthz")[0] == 503


def test_agent_waits_for_etcd_at_start_instead_of_exiting(etcd_server, start_agent, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="flannel_reconciler")
    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
        etcd_server.stop()
        kernel = node_kernel()
        port = _free_port()
        agent = start_agent(store, kernel, healthz_ip="127.0.0.1", healthz_port=port, metrics_port=port)
        # Before the first sync every family is there already, and says so: not ready, etcd down,
        # no cycle yet (0, not absent).
        wait_for(lambda: _scrape_when_up(port).get("flannel_reconciler_etcd_up") == 0, what="etcd_up 0 while it waits")
        m = scrape(port)
        assert m["flannel_reconciler_ready"] == 0 and m["flannel_reconciler_cycle_duration_seconds_count"] == 0
        assert m['flannel_reconciler_cycles_total{outcome="ok",trigger="resync"}'] == 0
        assert m["process_resident_memory_bytes"] > 0
        # Two failed attempts to read the config, each said and retried.
        wait_for(lambda: sum(r.getMessage().startswith("etcd: ") for r in caplog.records) >= 2,
                 what="two attempts at the config")
        assert agent.thread.is_alive() and agent.error is None and not agent.agent.state.ready
        etcd_server.start()
        agent.ready(timeout=30)
        m = scrape(port)
        assert m["flannel_reconciler_ready"] == 1 and m["flannel_reconciler_etcd_up"] == 1
        assert "100.64.2.0/24" in routes(kernel)


def test_one_peers_failing_entry_does_not_hold_back_readiness(etcd_store, start_agent, tmp_path):
    import errno

    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    put_peer(store, "100.64.3.0-24", "198.18.0.3", MAC3)
    kernel = node_kernel()
    kernel.inject("fdb", errno.EINVAL, op="create", persistent=True)
    agent = start_agent(store, kernel)
    agent.ready()
    assert (tmp_path / "subnet.env").exists()
    assert routes(kernel) == {}  # routes wait for their FDB entries, which keep failing
    assert agent.agent.metrics.get("flannel_reconciler_operations_total", kind="fdb", op="create",
                                   result="error") >= 2
    kernel.clear_faults()
    wait_for(lambda: set(routes(kernel)) == {"100.64.2.0/24", "100.64.3.0/24"}, what="retried on the next cycle")


def test_etcd_up_drops_during_an_outage_with_nothing_to_delete(etcd_server, start_agent):
    """A hung etcd (SIGSTOP) or a dead one turns etcd_up to 0 while it lasts,
    even when no deletion is pending (the watch's liveness probe reports it), and back to 1."""
    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
        agent = start_agent(store, node_kernel())
        agent.ready()
        up = lambda: agent.agent.metrics.get("flannel_reconciler_etcd_up")  # noqa: E731
        assert up() == 1
        etcd_server.pause()
        try:
            wait_for(lambda: up() == 0, timeout=20, what="etcd_up 0 while etcd is hung")
        finally:
            etcd_server.resume()
        wait_for(lambda: up() == 1, timeout=20, what="etcd_up 1 again")
        etcd_server.kill()
        wait_for(lambda: up() == 0, timeout=20, what="etcd_up 0 while etcd is dead")
        etcd_server.start()
        wait_for(lambda: up() == 1, timeout=30, what="etcd_up 1 after the restart")


def test_stop_is_immediate_whatever_the_resync_interval(etcd_store, tmp_path):
    """SIGTERM (here: the stop event) ends the loop at once, not at the next resync."""
    etcd_store.put_config(CONFIG)
    kernel = node_kernel()
    stop = threading.Event()
    agent = Agent(etcd_store, kernel, AgentOptions(iface="eth0", subnet_file=str(tmp_path / "subnet.env"),
                                                   resync_interval=3600))
    t = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    t.start()
    wait_for(lambda: agent.state.ready, what="ready")
    stop.set()
    t.join(timeout=10)   # the next resync is an hour away: returning at all proves stop woke the loop
    assert not t.is_alive()
    assert kernel.ifindex("flannel.1") is not None   # the kernel state is left in place


def test_an_unwritable_subnet_file_is_retried_and_never_kills_the_agent(etcd_store, tmp_path):
    """A directory at the subnet file's path (as good as read-only or full):
    the kernel is still programmed, the agent stays up and not ready, and once the path can be
    written the file appears and the agent turns ready."""
    etcd_store.put_config(CONFIG)
    put_peer(etcd_store, "100.64.2.0-24", "198.18.0.2", MAC2)
    kernel = node_kernel()
    path = tmp_path / "subnet.env"
    path.mkdir()
    stop = threading.Event()
    agent = Agent(etcd_store, kernel, AgentOptions(iface="eth0", subnet_file=str(path), resync_interval=0.3))
    errors: list[BaseException] = []

    def run():
        try:
            agent.run(stop)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for(lambda: "100.64.2.0/24" in routes(kernel), what="peers programmed")
        wait_for(lambda: agent.metrics.get("flannel_reconciler_subnet_file_errors_total") >= 2,
                 what="retried writes")
        assert t.is_alive() and not errors and not agent.state.ready
        path.rmdir()
        wait_for(lambda: agent.state.ready, what="ready once the file could be written")
        assert path.read_text().startswith("FLANNEL_NETWORK=100.64.0.0/16\n")
    finally:
        stop.set()
        t.join(timeout=10)
    assert not errors


def test_one_rule_decides_which_lease_is_ours(etcd_store, start_agent, tmp_path):
    """Our expiring lease plus a reservation for our PublicIP added later.
    Acquisition takes the reservation (the operator's word); the cycles must program that same
    subnet, not the older lease nobody renews any more, and report the other one loudly."""
    store = etcd_store
    store.put_config(CONFIG)
    mac = "0a:58:64:40:64:00"
    old = f"{store.subnets_prefix}100.64.100.0-24"
    store.put(old, encode_lease_value(ME, mac, 1), store.grant(600))
    reserved = f"{store.subnets_prefix}100.64.101.0-24"
    store.put(reserved, encode_lease_value(ME, mac, 1))
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    assert agent.agent.keeper.current.key == reserved
    addrs = {a.cidr for a in kernel.dump(["flannel.1", "cni0"]).of("address").values()}
    assert addrs == {"100.64.101.0/32", "100.64.101.1/24"}
    assert "FLANNEL_SUBNET=100.64.101.1/24\n" in (tmp_path / "subnet.env").read_text()
    assert agent.agent.metrics.get("flannel_reconciler_own_public_ip_duplicates") == 1


def test_hostile_etcd_content_neither_floods_nor_forges_the_log(etcd_store, start_agent, caplog):
    """10,000 junk keys, a 1 MB bad value and a key with a newline.
    The log grows by a bounded number of lines (not one per key per cycle), every line is one
    line, no line carries the megabyte, and the skip metric keeps its fixed label set."""
    import logging

    from prometheus_client.parser import text_string_to_metric_families

    from reconciler.agent.metrics import SKIP_REASONS
    from reconciler.agent.skip_report import SKIP_LINES, SKIP_WINDOW

    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    agent = start_agent(store, node_kernel(), resync_interval=2.0)
    agent.ready()
    caplog.set_level(logging.INFO, logger="flannel_reconciler")
    caplog.clear()
    series_before = agent.agent.metrics.render().count("\n")
    dumped_before = agent.agent.metrics.get("flannel_reconciler_dumps_total")
    big = '{"PublicIP":"198.18.0.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"' + "a" * 1_000_000 + '"}}'
    store.put(f"{store.subnets_prefix}100.64.77.0-24", big)
    store.put(f"{store.subnets_prefix}x\nFORGED INFO all is well 100.64.78.0-24", "{}")
    revision = 0
    started = time.monotonic()
    for i in range(10_000):
        revision = store.put(f"{store.subnets_prefix}junk-{i}", "not json")
    wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_lease_revision") >= revision, timeout=120,
             what="every junk key folded in")
    agent.resyncs(2)   # with all of it in the table
    messages = [r.getMessage() for r in caplog.records]
    # How long 10,000 puts take depends on the machine, and the log is bounded per unit of that:
    # each dumped cycle (the resync, every 2 s here) says its summary and the skip total, and the
    # skipped leases are named at most SKIP_LINES per SKIP_WINDOW seconds, the rest summed up.
    windows = math.ceil((time.monotonic() - started) / SKIP_WINDOW) + 1
    dumps = agent.agent.metrics.get("flannel_reconciler_dumps_total") - dumped_before
    per_dump = [m for m in messages if m.startswith("cycle trigger=") or re.match(r"\d+ leases skipped \(", m)]
    named = [m for m in messages if m.startswith("skipped lease ")]
    sums = [m for m in messages if m.startswith("skipped ") and "more leases" in m]
    assert len(per_dump) <= 2 * dumps + 5, f"{len(per_dump)} cycle and total lines for {dumps:g} dumps"
    assert len(named) <= SKIP_LINES * windows, f"{len(named)} leases named in {windows} windows"
    assert len(sums) <= windows + dumps + 5
    rest = len(messages) - len(per_dump) - len(named) - len(sums)
    assert rest < 20, f"{rest} other log lines for 10,002 junk keys"
    assert len(named) < 10_002 // 10      # not one per key
    assert all("\n" not in m for m in messages), "a key forged a log line"
    assert all(len(m) < 2_000 for m in messages), "the megabyte reached the log"
    assert any("x\\nFORGED" in m for m in messages) or any("more leases" in m for m in messages)
    assert any(m.startswith("skipped ") and "more leases" in m for m in messages)
    text = agent.agent.metrics.render()
    skipped = {s.labels["reason"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "flannel_reconciler_leases_skipped"}
    assert set(skipped) == set(SKIP_REASONS) and skipped["bad-key"] >= 10_000 and skipped["bad-value"] >= 1
    assert text.count("\n") == series_before      # every series was there before the junk came
    assert "100.64.2.0/24" in routes(agent.kernel)   # the good peer is still programmed


def test_a_config_changed_in_etcd_is_said_once_and_counted(etcd_store, start_agent, caplog):
    """The config is read at start-up (as flanneld); a change is not silent."""
    import logging

    store = etcd_store
    store.put_config(CONFIG)
    agent = start_agent(store, node_kernel())
    agent.ready()
    caplog.set_level(logging.WARNING, logger="flannel_reconciler")
    store.put_config(CONFIG.replace('"SubnetLen":24', '"SubnetLen":25'))
    wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_config_changed") == 1, what="config change seen")
    agent.resyncs(2)   # said once, not once per resync
    said = [r.getMessage() for r in caplog.records if "network config in etcd changed" in r.getMessage()]
    assert len(said) == 1 and "restart the agent" in said[0]
    store.put_config(CONFIG)
    wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_config_changed") == 0, what="config back")


def test_a_deleted_namespace_turns_healthz_red(etcd_store, start_agent):
    """The agent's namespace deleted under it: /healthz 503, logged."""
    import subprocess

    from tests.conftest_netns import require_root
    from tests.netns import unique_name

    require_root()
    ns = unique_name("gone")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        etcd_store.put_config(CONFIG)
        agent = start_agent(etcd_store, node_kernel(), netns=ns)
        agent.ready()
        assert agent.agent.http.healthz()[0] == 200
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    wait_for(lambda: agent.agent.http.healthz()[0] == 503, what="healthz red")
    assert "was deleted" in agent.agent.http.healthz()[2]


# --------------------------------------------------------------------------------------------
# The node's identity in etcd: our key overwritten, etcd wiped, the config deleted
# --------------------------------------------------------------------------------------------

def _own_addresses(kernel: ModelKernel) -> set[str]:
    return {a.cidr for a in kernel.dump(["flannel.1", "cni0"]).of("address").values()}


@pytest.mark.parametrize("bad,reason", [("garbage{", "unparseable"),
                                        (encode_lease_value("198.18.0.77", "0a:58:c6:12:00:4d", 1), "foreign")],
                         ids=["unparseable", "foreign"])
def test_a_bad_write_over_our_key_is_written_back_and_the_subnet_kept(etcd_store, start_agent, tmp_path, bad,
                                                                      reason, caplog):
    """``etcdctl put <our key> 'garbage{'`` (or another node's PublicIP)
    used to renumber the node (a new random subnet, cni0 renumbered, every pod cut off)."""
    import logging

    store = etcd_store
    store.put_config(CONFIG)
    put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    kernel = node_kernel()
    agent = start_agent(store, kernel)
    agent.ready()
    caplog.set_level(logging.ERROR)
    own = agent.agent.keeper.current
    addresses, env = _own_addresses(kernel), (tmp_path / "subnet.env").read_text()
    ifindex = kernel.ifindex("cni0")

    store.put(own.key, bad)
    wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_own_lease_overwritten_total", reason=reason) == 1,
             what="the overwrite counted")
    wait_for(lambda: store.get(own.key).value == own.value, what="our value written back")
    assert agent.agent.keeper.current.subnet == own.subnet
    assert [kv.key for kv in store.snapshot().kvs if ME in kv.value] == [own.key]   # no second lease
    assert store.get(own.key).lease == own.lease_id                              # under our living lease
    wait_for(lambda: agent.agent.metrics.get("flannel_reconciler_lease_revision") >= store.get(own.key).mod_revision,
             what="the written-back value folded in")
    assert _own_addresses(kernel) == addresses and kernel.ifindex("cni0") == ifindex
    assert (tmp_path / "subnet.env").read_text() == env
    assert "100.64.2.0/24" in routes(kernel)
    assert any("wrote ours back" in r.getMessage() and own.key in r.getMessage() for r in caplog.records)
    assert agent.agent.metrics.get("flannel_reconciler_own_lease_not_ours") == 0
    assert agent.agent.http.readyz()[0] == 200


def test_a_deleted_config_is_said_and_counted(etcd_store, start_agent, caplog):
    """The config key deleted while running used to pass in silence
    (``config_changed`` 0, no log), until the next restart anywhere hung waiting for it."""
    import logging

    store = etcd_store
    store.put_config(CONFIG)
    agent = start_agent(store, node_kernel())
    agent.ready()
    caplog.set_level(logging.ERROR)
    metric = agent.agent.metrics.get
    assert metric("flannel_reconciler_config_missing") == 0
    store.delete(store.config_key)
    wait_for(lambda: metric("flannel_reconciler_config_missing") == 1, what="config missing seen")
    assert metric("flannel_reconciler_config_changed") == 1
    # Several config checks: the etcd thread makes one per resync interval, as the worker resyncs
    # once per interval; three resyncs counted by the agent are about three checks.  Said once.
    agent.resyncs(3)
    said = [r.getMessage() for r in caplog.records if "was deleted from etcd" in r.getMessage()]
    assert len(said) == 1 and store.config_key in said[0] and "put it back" in said[0]
    assert agent.agent.state.ready
    store.put_config(CONFIG)
    wait_for(lambda: metric("flannel_reconciler_config_missing") == 0 and metric("flannel_reconciler_config_changed") == 0,
             what="config back")


def _wipe(etcd_server) -> None:
    """etcd restarted with an empty data dir, on the same ports (a lost disk, a fresh member)."""
    import shutil

    etcd_server.stop()
    shutil.rmtree(etcd_server.data_dir)
    etcd_server.start()


def test_a_wiped_etcd_is_noticed_our_key_reasserted_and_nothing_deleted(etcd_server, start_agent, caplog):
    """After a wipe the agent used to wait for its old revision forever on an
    etcd at revision 1: our key never came back (its subnet free for anyone), a new peer was
    never programmed, and /readyz said 200."""
    import logging

    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
        put_peer(store, "100.64.3.0-24", "198.18.0.3", MAC3)
        kernel = node_kernel()
        agent = start_agent(store, kernel)
        agent.ready()
        caplog.set_level(logging.INFO)
        own = agent.agent.keeper.current
        metric = agent.agent.metrics.get
        assert metric("flannel_reconciler_etcd_revision_backwards") == 0

        _wipe(etcd_server)
        wait_for(lambda: metric("flannel_reconciler_etcd_rollbacks_total") == 1, timeout=30,
                 what="the rollback noticed")
        assert metric("flannel_reconciler_etcd_revision_backwards") == 1
        status, _, body = agent.agent.http.readyz()
        assert status == 503 and "went back in time" in body
        # Our key is back at once, same subnet, same bytes, under a fresh etcd lease.
        wait_for(lambda: store.get(own.key) is not None, what="our key re-asserted")
        assert store.get(own.key).value == own.value and store.time_to_live(store.get(own.key).lease) > 86000
        # A peer joining the new etcd is programmed ...
        put_peer(store, "100.64.4.0-24", "198.18.0.4", MAC4)
        wait_for(lambda: "100.64.4.0/24" in routes(kernel), what="a peer of the new etcd programmed")
        # ... and the peers the wipe lost are not deleted while it settles.
        agent.resyncs(3)   # several resyncs (each a full plan that would delete them if it could)
        assert {"100.64.2.0/24", "100.64.3.0/24"} <= set(routes(kernel))
        assert kernel.dump(["flannel.1"]).get("fdb", ("flannel.1", MAC2)) is not None
        said = [r.getMessage() for r in caplog.records if "went back in time" in r.getMessage()]
        assert len(said) == 1 and "revision" in said[0], said
        assert agent.agent.metrics.get("flannel_reconciler_etcd_up") == 1


def test_after_a_wiped_etcd_settled_the_lost_peers_go_and_readyz_is_green(etcd_server, start_agent):
    """The other half of item 1: once the new listing is in, our key is back and the settle time
    passed, the view is trusted again: peers still absent are gone, /readyz is 200 again."""
    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_server.endpoint], timeout=1.0) as store:
        store.put_config(CONFIG)
        put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
        kernel = node_kernel()
        agent = start_agent(store, kernel, rollback_settle=2.0)
        agent.ready()
        metric = agent.agent.metrics.get
        _wipe(etcd_server)
        wait_for(lambda: metric("flannel_reconciler_etcd_rollbacks_total") == 1, timeout=30,
                 what="the rollback noticed")
        wait_for(lambda: "100.64.2.0/24" not in routes(kernel), timeout=30, what="the lost peer removed")
        wait_for(lambda: agent.agent.http.readyz()[0] == 200, what="ready again")
        assert metric("flannel_reconciler_etcd_revision_backwards") == 0
        assert store.get(agent.agent.keeper.current.key).value == agent.agent.keeper.current.value


def test_a_lone_lease_event_is_not_kept_waiting_but_a_burst_is_folded(etcd_store, tmp_path):
    """Coalescing only while events keep arriving: after a quiet spell the first event goes
    straight to a cycle (no coalescing wait before its writes); a burst of puts does wait, so a
    storm still folds into few cycles."""
    store = etcd_store
    store.put_config(CONFIG)
    kernel = node_kernel()
    trace: list[str] = []

    class Traced(threading.Event):
        def wait(self, timeout=None):
            if timeout == 0.01:
                trace.append("coalesce")
            return super().wait(timeout)

    real_apply = kernel.apply

    def apply(changes):
        trace.append("apply")
        return real_apply(changes)

    kernel.apply = apply
    stop = Traced()
    agent = Agent(store, kernel, AgentOptions(iface="eth0", subnet_file=str(tmp_path / "subnet.env"),
                                              resync_interval=3600, coalesce=0.01, burst_window=0.05))
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.state.ready, 15.0, "agent ready")
        # A quiet spell longer than the burst window: the agent's own wake-ups are over.
        def quiet() -> bool:
            n = len(trace)
            time.sleep(0.2)
            return len(trace) == n

        wait_for(quiet, 10.0, "a quiet spell")
        start = len(trace)
        put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
        wait_for(lambda: "100.64.2.0/24" in routes(kernel), 10.0, "the lone peer's route")
        assert trace[start] == "apply", trace[start:]
        start = len(trace)
        for i in range(10, 40):
            put_peer(store, f"100.64.{i}.0-24", f"198.18.0.{i}", f"0a:58:64:40:{i:02x}:00")
        wait_for(lambda: all(f"100.64.{i}.0/24" in routes(kernel) for i in range(10, 40)), 20.0, "the burst's routes")
        assert "coalesce" in trace[start:], trace[start:]
    finally:
        stop.set()
        thread.join(timeout=10)
