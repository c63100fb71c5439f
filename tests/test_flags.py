"""flanneld-compatible flags, and the operator-error path (bad values, out-of-range MTUs, a vanished namespace).

Every flag: Go's one-dash forms, its ``FLANNELD_*`` variable, the command line
winning over the variable, a bad value named with its flag or variable.
"""
from __future__ import annotations

import json
import re as _re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.cli import flags
from reconciler.cli import main as cli
from reconciler.cli.main import EXAMPLE_SNAPSHOT, main, parse_args
from reconciler.cli.flags import FLAGS, UNSUPPORTED

EXAMPLE = str(EXAMPLE_SNAPSHOT)
ROOT = Path(__file__).resolve().parent.parent
OFFLINE = ["plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--offline"]

#: flanneld's flags, as its main.go defines them (plus klog's three it copies).
FLANNELD_FLAGS = (
    "etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username",
    "etcd-password", "iface", "iface-regex", "iface-can-reach", "subnet-file", "public-ip", "public-ipv6",
    "subnet-lease-renew-margin", "ip-masq", "ip-masq-fully-random-disable", "kube-subnet-mgr", "kube-api-url",
    "kube-annotation-prefix", "kubeconfig-file", "healthz-ip", "healthz-port", "iptables-resync",
    "iptables-forward-rules", "ip-blackhole-route", "net-config-path", "set-node-network-unavailable",
    "v", "vmodule", "log_backtrace_at",
)


@pytest.fixture(autouse=True)
def no_agent(monkeypatch):
    """``run`` whose flags all check out would start a real agent on this host:
    here it returns 99 instead, which no test expects."""
    from reconciler.cli import agent as agent_cli

    real = agent_cli.cmd_run
    monkeypatch.setattr(agent_cli, "cmd_run", lambda args: 99)
    return real


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The single stderr line of an error, with no traceback around it."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def files(tmp_path):
    f = tmp_path / "some.pem"
    f.write_text("x")
    return tmp_path, str(f)


def samples(tmp: Path, pem: str) -> dict[str, tuple[str, object, str | None]]:
    """Per flag: a good text, the value it gives, and a bad text (None: every text is good)."""
    out = str(tmp / "out.json")
    return {
        "leases-file": (EXAMPLE, EXAMPLE, str(tmp)),
        "etcd-endpoints": ("http://127.0.0.1:1,https://[fd00::1]:2379", ("http://127.0.0.1:1", "https://[fd00::1]:2379"),
                           "http://127.0.0.1:99999"),
        "etcd-prefix": ("/my/net", "/my/net", None),
        "etcd-cafile": (pem, pem, str(tmp / "missing.pem")),
        "etcd-certfile": (pem, pem, str(tmp)),
        "etcd-keyfile": (pem, pem, str(tmp / "missing.pem")),
        "etcd-username": ("root", "root", None),
        "etcd-password": ("-secret", "-secret", None),
        "etcd-timeout": ("2.5", 2.5, "0"),
        "public-ip": ("198.18.0.1", "198.18.0.1", "224.0.0.1"),
        "public-ipv6": ("fd00::1", "fd00::1", "::1"),
        "iface": ("eth0", ("eth0",), "a/b"),
        "iface-regex": ("^eth[0-9]$", ("^eth[0-9]$",), "("),
        "iface-can-reach": ("198.18.0.9", "198.18.0.9", "nowhere"),
        "underlay-mtu": ("1500", 1500, "117"),
        "netns": ("blue", "blue", "a/b"),
        "netlink-backend": ("batched", "batched", "fast"),
        "bridge": ("br-pods", "br-pods", "x" * 16),
        "no-bridge": ("T", True, "yes"),
        "route-layout": ("nexthop", "nexthop", "per-peer"),
        "ip-masq": ("1", True, "on"),
        "ip-masq-fully-random-disable": ("TRUE", True, "y"),
        "iptables-forward-rules": ("f", False, "no"),
        "iptables-resync": ("10", 10, "0"),
        "live-file": (pem, pem, str(tmp)),
        "offline": ("False", False, "2"),
        "output": ("json", "json", "yaml"),
        "output-file": (out, out, str(tmp)),
        "subnet-file": (out, out, str(tmp)),
        "resync-interval": ("2", 2.0, "0"),
        "healthz-ip": ("fd00::9", "fd00::9", "999.1.1.1"),
        "healthz-port": ("9099", 9099, "70000"),
        "metrics-port": ("0x10", 16, "-1"),
        "log-level": ("debug", "debug", "verbose"),
        "config": (pem, pem, str(tmp / "missing.json")),
        "segment": ("198.18.0.0/25", ("198.18.0.0/25",), "nowhere"),
        "expiry-window": ("600", 600, "-1"),
        "show-all": ("t", True, "maybe"),
        "subnet-lease-renew-margin": ("1439", 1439, "1440"),
        "ip-blackhole-route": ("true", True, "yes"),
        "v": ("2", 2, "-1"),
        "vmodule": ("gc*=2", "gc*=2", None),
        "log_backtrace_at": ("main.go:10", "main.go:10", None),
    }


def _command(flag) -> str:
    return sorted(flag.commands)[0]


def test_every_flag_has_help_text_a_variable_and_a_sample(files):
    table = samples(*files)
    assert set(table) == {f.name for f in FLAGS}
    for f in FLAGS:
        assert len(f.help) > 15 and f.env == "FLANNELD_" + f.name.upper().replace("-", "_")
    help_text = subprocess.run([sys.executable, "-m", "reconciler", "run", "--help"], capture_output=True,
                               text=True, timeout=60, cwd=ROOT).stdout
    for f in flags.flags_for("run"):
        assert f"--{f.name}" in help_text and f.env in help_text


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.name)
def test_flag_from_go_forms_from_environment_and_bad_values(flag, files):
    good, value, bad = samples(*files)[flag.name]
    cmd = _command(flag)
    base = [cmd]
    # Go's forms: -flag=value, -flag value, --flag value, --flag=value (bools: -flag=word only).
    forms = [[f"-{flag.name}={good}"], [f"--{flag.name}={good}"]]
    if flag.kind != "bool":
        forms += [[f"-{flag.name}", good], [f"--{flag.name}", good]]
    for form in forms:
        assert getattr(parse_args(base + form, environ={}), flag.dest) == value, form
    # FLANNELD_<FLAG>, and the command line winning over it.
    assert getattr(parse_args(base, environ={flag.env: good}), flag.dest) == value
    default = flag.default
    assert getattr(parse_args(base, environ={flag.env: ""}), flag.dest) == default  # "" is unset, as in Go
    if bad is not None:
        with pytest.raises(flags.FlagError) as exc:
            parse_args(base, environ={flag.env: bad})
        assert str(exc.value).startswith(f"{flag.env}={bad!r}: ")
        with pytest.raises(flags.FlagError) as exc:
            parse_args(base + [f"-{flag.name}={bad}"], environ={})
        assert str(exc.value).startswith(f"--{flag.name} {bad!r}: ")
        # The command line wins: a bad variable under a good flag is never read.
        assert getattr(parse_args(base + [f"--{flag.name}={good}"], environ={flag.env: bad}), flag.dest) == value


def test_single_dash_etcd_endpoints_as_systemd_units_write_it(capsys):
    args = parse_args(["run", "-etcd-endpoints=http://198.18.0.5:2379", "-etcd-prefix", "/x/network",
                       "-ip-masq", "-iface=eth1", "-iface", "198.18.0.1"], environ={})
    assert args.etcd_endpoints == ("http://198.18.0.5:2379",)
    assert args.etcd_prefix == "/x/network" and args.ip_masq is True
    assert args.iface == ("eth1", "198.18.0.1")
    # And end to end: a one-dash plan gives the golden plan.
    code, out, _ = run(capsys, "plan", "-leases-file=" + EXAMPLE, "-public-ip", "198.18.0.1", "-offline")
    assert code == 2 and out.startswith("node 198.18.0.1, subnet 100.64.1.0/24\n")


def test_go_booleans_never_take_the_next_word(capsys):
    # Go: "-ip-masq false" is -ip-masq (true) and a stray argument.
    code, _, err = run(capsys, "run", "-ip-masq", "false")
    assert one_error(err) == "error: -ip-masq false: a boolean flag never takes the next word; write -ip-masq=false"
    assert code == 1
    for word in flags.GO_TRUE:
        assert parse_args(["run", f"-ip-masq={word}"], environ={}).ip_masq is True
        assert parse_args(["run"], environ={"FLANNELD_IP_MASQ": word}).ip_masq is True
    for word in flags.GO_FALSE:
        assert parse_args(["run", f"--ip-masq={word}"], environ={}).ip_masq is False
        assert parse_args(["run"], environ={"FLANNELD_IP_MASQ": word}).ip_masq is False
    for word in ("yes", "no", "on", "tRuE", " 1", ""):
        with pytest.raises(flags.FlagError):
            parse_args(["run", f"--ip-masq={word}"], environ={})


def test_flanneld_flags_are_all_known_and_unsupported_ones_refused_with_the_reason(capsys):
    ours = {f.name for f in FLAGS}
    refused = {u.name for u in UNSUPPORTED}
    assert set(FLANNELD_FLAGS) <= ours | refused
    for u in UNSUPPORTED:
        value = str(not flags.go_bool(u.default or "false")).lower() if u.kind == "bool" else "something-else"
        argv = ["run", f"-{u.name}={value}"]
        code, _, err = run(capsys, *argv)
        assert code == 1
        assert one_error(err) == f"error: flanneld flag -{u.name} is not supported by flannel-reconciler: {u.why}"
        with pytest.raises(flags.FlagError, match=f"^{u.env}="):
            parse_args(["plan"], environ={u.env: value})
        # flanneld's default asks for nothing and is accepted.
        if u.default:
            parse_args(["run", f"-{u.name}={u.default}"], environ={u.env: u.default})
    # A value flag without its value, and a bool flag's form leaving the next word alone.
    code, _, err = run(capsys, "run", "-kube-api-url")
    assert code == 1 and "flag needs an argument" in one_error(err)
    assert parse_args(["run", "-kube-subnet-mgr=false", "-v", "0"], environ={}).command == "run"
    assert run(capsys, "run", "-set-node-network-unavailable", "-kube-subnet-mgr=0")[0] == 99


def test_usage_errors_are_one_line_and_exit_1_not_2(capsys):
    # Exit 2 means "changes pending" to scripts running plan: a typo must not say that.
    for argv in (["plan", "--bogus"], ["plan", "--public-ip"], [], ["frobnicate"], ["plan", "--leases"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "", argv
        one_error(err)


# --- a --public-ip no peer can reach is refused, naming the flag ----------------

@pytest.mark.parametrize("ip", ["garbage", "0.0.0.0", "127.0.0.1", "224.0.0.1", "2001:db8::1",
                                "255.255.255.255"])
def test_run_public_ip_that_no_peer_can_reach_is_refused(capsys, ip):
    code, _, err = run(capsys, "run", "--public-ip", ip)
    assert code == 1 and one_error(err).startswith(f"error: --public-ip {ip!r}: ")


def test_run_iface_lo_is_refused_naming_the_interface(capsys, netns, no_agent, monkeypatch):
    from reconciler.cli import agent as agent_cli

    monkeypatch.setattr(agent_cli, "cmd_run", no_agent)  # the real one: it stops before the agent
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    with socket.socket() as s:  # a closed port: etcd is never reached
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "run", "--netns", netns, "--iface", "lo",
                       "--etcd-endpoints", f"http://127.0.0.1:{port}")
    line = one_error(err)
    assert code == 1 and line.startswith("error: --iface lo: its address 127.0.0.1 is not a unicast address")


@pytest.mark.parametrize("argv,named", [
    (["run", "--healthz-port", "70000"], "--healthz-port '70000'"),
    (["run", "--metrics-port", "-5"], "--metrics-port '-5'"),
    (["run", "--healthz-ip", "999.1.1.1"], "--healthz-ip '999.1.1.1'"),
])
def test_bad_ports_and_addresses(capsys, argv, named):
    code, _, err = run(capsys, *argv)
    assert code == 1 and one_error(err).startswith(f"error: {named}: ")


def test_bad_variable_is_named_and_help_still_works(capsys, monkeypatch):
    monkeypatch.setenv("FLANNELD_HEALTHZ_PORT", "abc")
    code, out, err = run(capsys, "run", "--help")
    assert code == 0 and "--healthz-port" in out and err == ""
    code, _, err = run(capsys, "run")
    assert code == 1 and one_error(err) == "error: FLANNELD_HEALTHZ_PORT='abc': not an integer"


def test_snapshot_to_a_directory_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "snapshot", "--leases-file", EXAMPLE, "-o", str(tmp_path))
    assert code == 1 and "is a directory" in one_error(err)
    code, out, err = run(capsys, "snapshot", "--leases-file", EXAMPLE, "-o", str(tmp_path / "s.json"))
    assert code == 0 and json.loads((tmp_path / "s.json").read_text())["prefix"] == "/coreos.com/network"
    code, _, err = run(capsys, "snapshot", "--leases-file", EXAMPLE, "-o", str(tmp_path / "no" / "s.json"))
    assert code == 1 and one_error(err).startswith("error: cannot write -o ")


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe\x89PNG\r\n", b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
])
@pytest.mark.parametrize("flag", ["--leases-file", "--live-file"])
def test_binary_and_deep_files_are_refused(capsys, tmp_path, content, flag):
    f = tmp_path / "in.json"
    f.write_bytes(content)
    # --live-file replaces --offline (the two contradict each other).
    argv = (OFFLINE if flag == "--leases-file" else OFFLINE[:-1]) + [flag, str(f)]
    code, _, err = run(capsys, *argv)
    assert code == 1 and one_error(err).startswith(f"error: {flag} {f}: ")


@pytest.mark.parametrize("live,message", [
    ([], "must be a JSON object"),
    ("links", "must be a JSON object"),
    ({"links": [{"name": "flannel.1", "type": "vxlan", "mtu": "big"}]}, "links[0]: mtu must be int or null"),
    ({"links": [{"name": "flannel.1", "type": "vxlan", "up": "yes"}]}, "links[0]: up must be bool or null"),
    ({"routes": [{"dst": "100.64.2.0/24", "gateway": 7, "dev": None}]}, "routes[0]: gateway must be str or null"),
    ({"neighs": [{"dev": "flannel.1", "ip": "100.64.2.0", "mac": ["x"]}]}, "neighs[0]: mac must be str"),
    ({"fdb": [{"dev": "flannel.1", "mac": "0a:58:64:40:02:00", "dst": None}]}, "fdb[0]: dst must be str"),
    ({"addresses": [{"dev": True, "cidr": "100.64.1.1/24"}]}, "addresses[0]: dev must be str"),
])
def test_live_file_of_the_wrong_shape_or_types_is_refused(capsys, tmp_path, live, message):
    f = tmp_path / "live.json"
    f.write_text(json.dumps(live))
    code, out, err = run(capsys, *OFFLINE[:-1], "--live-file", str(f))
    assert code == 1 and out == "" and message in one_error(err)


# --- an MTU out of range is refused, naming the flag ----------------------------

@pytest.mark.parametrize("mtu", ["-1", "117", "0", "65536", "big"])
def test_underlay_mtu_out_of_range_is_refused(capsys, mtu):
    code, out, err = run(capsys, *OFFLINE, "--underlay-mtu", mtu)
    assert code == 1 and out == "" and one_error(err).startswith(f"error: --underlay-mtu {mtu!r}: ")


def test_smallest_underlay_mtu_leaves_ipv4s_minimum_on_the_overlay(capsys):
    code, out, _ = run(capsys, *OFFLINE, "--underlay-mtu", "118")
    assert code == 2 and "link flannel.1 type vxlan" in out and " mtu 68 " in out


@pytest.mark.parametrize("seconds", ["0", "-1", "0.01", "nan", "inf"])
def test_resync_interval_that_would_spin_is_refused(capsys, seconds):
    code, _, err = run(capsys, "run", "--resync-interval", seconds)
    assert code == 1 and one_error(err).startswith(f"error: --resync-interval {seconds!r}: ")


# --- the last line of defence ---------------------------------------------------

def test_an_unexpected_exception_is_one_line_naming_a_bug(capsys, monkeypatch):
    def broken(args):
        raise KeyError("oops")

    monkeypatch.setitem(cli.COMMANDS, "plan", broken)
    code, _, err = run(capsys, *OFFLINE)
    assert code == 1
    assert one_error(err) == ("error: internal error: KeyError: 'oops' "
                              "(a bug; run with --log-level debug for the traceback)")
    code, _, err = run(capsys, *OFFLINE, "--log-level", "debug")
    assert code == 1 and err.startswith("Traceback") and err.splitlines()[-1].startswith("error: internal error")


def test_os_errors_are_one_line(capsys, monkeypatch):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/run/flannel/subnet.env")

    monkeypatch.setitem(cli.COMMANDS, "plan", denied)
    code, _, err = run(capsys, *OFFLINE)
    assert code == 1 and one_error(err) == "error: /run/flannel/subnet.env: Permission denied"


# --- the HTTP endpoints (item 5: port in use; item 11: idle connections) ------

def _taken_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def _wait(pred, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_http_port_in_use_is_retried_until_free(caplog):
    import urllib.request

    from reconciler.agent.metrics import serve_http

    holder, port = _taken_port()
    endpoint = serve_http("127.0.0.1", port, {"/healthz": lambda: (200, "text/plain", "ok\n")}, retry=0.05)
    try:
        assert not endpoint.bound and endpoint.last_error == "Address already in use"
        assert any("cannot listen on 127.0.0.1 port" in r.getMessage() for r in caplog.records)
        holder.close()
        _wait(lambda: endpoint.bound, "the port to be bound")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
    finally:
        endpoint.shutdown()
        holder.close()


def test_http_shutdown_stops_the_retry(caplog):
    from reconciler.agent.metrics import serve_http

    holder, port = _taken_port()
    endpoint = serve_http("127.0.0.1", port, {}, retry=0.05)
    endpoint.shutdown()
    holder.close()
    time.sleep(0.3)  # several retry periods: none may bind after shutdown
    assert not endpoint.bound
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # still free


def test_idle_http_connection_is_dropped(monkeypatch):
    from reconciler.agent import metrics

    monkeypatch.setattr(metrics, "READ_TIMEOUT", 0.2)
    endpoint = metrics.serve_http("127.0.0.1", 0, {})
    try:
        port = endpoint.server_address[1]
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.settimeout(10)
            # The server gives up on the silent client and closes (its handler
            # thread returns): recv sees EOF instead of waiting forever.
            assert c.recv(1) == b""
    finally:
        endpoint.shutdown()


def test_agent_keeps_running_while_its_health_port_is_taken(etcd_store, tmp_path, monkeypatch):
    import urllib.request

    from reconciler.agent import metrics
    from tests.test_daemon import CONFIG, Running, node_kernel

    monkeypatch.setattr(metrics, "BIND_RETRY", 0.05)
    etcd_store.put_config(CONFIG)
    holder, port = _taken_port()
    agent = Running(etcd_store, node_kernel(), tmp_path, healthz_ip="127.0.0.1", healthz_port=port)
    try:
        agent.ready()  # the reconcile loop runs although the probe port is held
        holder.close()
        _wait(lambda: _get(urllib.request, port) == 200, "/readyz once the port is free")
    finally:
        holder.close()
        agent.close()


def _get(urllib_request, port):
    try:
        with urllib_request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status
    except OSError:
        return None


# --- the documentation is true to the flag table and to --help, both ways -------------------

_NAME = _re.compile(r"`--?([A-Za-z0-9_-]+)`")


def _table(text: str, header: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _help_options(command: str, capsys) -> set[str]:
    """The long options ``COMMAND --help`` lists (its option column, not the descriptions)."""
    with pytest.raises(SystemExit):
        parse_args([command, "--help"], environ={})
    out = capsys.readouterr().out
    return set(_re.findall(r"^  (?:-[A-Za-z] [^,]*, )?--([A-Za-z0-9_-]+)", out, _re.M)) - {"help"}


def test_readme_flag_table_is_the_flag_table():
    text = (ROOT / "README.md").read_text().split("\n## Flags", 1)[1].split("\n## ", 1)[0]
    rows = _table(text, "| flanneld flag |")
    listed: dict[str, str] = {}
    for first, here in rows:
        for name in _NAME.findall(first):
            assert name not in listed, f"README lists -{name} twice"
            listed[name] = here
    by_name = {f.name: f for f in FLAGS}
    refused = {u.name for u in UNSUPPORTED}
    flanneld = {f.name for f in FLAGS if f.status in ("flanneld", "ignored")} | refused | {"version"}
    assert set(listed) == flanneld, "README's flanneld flags differ from FLAGS/UNSUPPORTED"
    for name, here in listed.items():
        assert here.startswith("refused") == (name in refused), name
        flag = by_name.get(name)
        assert here.startswith("accepted and ignored") == (flag is not None and flag.status == "ignored"), name
        assert "being merged" not in here and "until" not in here, name
    ours = text.split("Ours:", 1)[1].split("\n\n", 1)[0]
    assert set(_NAME.findall(ours)) == {f.name for f in FLAGS if f.status == "ours"} | {"o"}


def test_flags_md_tables_are_the_flag_table():
    text = (ROOT / "docs" / "flags.md").read_text()
    rows = _table(text, "| flag | variable |")
    seen = set()
    for name_cell, env, default, commands, status, _meaning in rows:
        names = _NAME.findall(name_cell)
        flag = next((f for f in FLAGS if f.name == names[0]), None)
        assert flag is not None, f"docs/flags.md lists --{names[0]}, which is not in FLAGS"
        seen.add(flag.name)
        assert env == f"`{flag.env}`", flag.name
        assert status.split()[0] == flag.status, flag.name
        want = flags.AGENT if commands == "all but demo" else frozenset(c.strip() for c in commands.split(","))
        assert want == flag.commands, flag.name
        if isinstance(flag.default, (bool, int, float, str)) and not isinstance(flag.default, tuple):
            shown = str(flag.default).lower() if isinstance(flag.default, bool) else f"{flag.default:g}" \
                if isinstance(flag.default, float) else str(flag.default)
            assert default.startswith(f"`{shown}`"), (flag.name, default)
    assert seen == {f.name for f in FLAGS}, "docs/flags.md's table and FLAGS differ"
    refused = _table(text, "| flag | flanneld default |")
    assert {_NAME.findall(r[0])[0]: r[1].strip("`") for r in refused} == {u.name: u.default for u in UNSUPPORTED}


@pytest.mark.parametrize("command", ["plan", "apply", "show", "run", "snapshot"])
def test_help_lists_exactly_the_flags_of_the_command(command, capsys):
    assert _help_options(command, capsys) == {f.name for f in flags.flags_for(command)}


# --- contradictions, misplaced flags, a closed stdout, endless input -------------------------

@pytest.mark.parametrize("argv,env,line", [
    (OFFLINE + ["--live-file", EXAMPLE], {},
     "error: --offline and --live-file contradict each other: both name the live state to compare against; "
     "give one"),
    (OFFLINE + ["--bridge", "br-pods", "--no-bridge"], {},
     "error: --no-bridge and --bridge contradict each other: one says no pod bridge, the other names it; "
     "give one"),
    (OFFLINE + ["--etcd-endpoints", "http://127.0.0.1:2379"], {},
     "error: --leases-file and --etcd-endpoints contradict each other: both name where the leases come from; "
     "give one"),
    (OFFLINE, {"FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:2379"},
     "error: --leases-file and FLANNELD_ETCD_ENDPOINTS contradict each other: both name where the leases come "
     "from; give one"),
    (["apply", "--leases-file", EXAMPLE, "--offline"], {},
     "error: --offline is not an option of apply (it is one of plan) (see flannel-reconciler apply --help)"),
    (["plan", "--leases-fil", EXAMPLE], {},
     "error: unknown flag --leases-fil: did you mean --leases-file? (see flannel-reconciler plan --help)"),
])
def test_contradictory_and_misplaced_flags_are_one_clear_error(capsys, monkeypatch, argv, env, line):
    for key in [k for k in __import__("os").environ if k.startswith("FLANNELD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == "" and one_error(err) == line


def test_a_boolean_set_false_contradicts_nothing(capsys):
    code, out, _ = run(capsys, *OFFLINE, "--no-bridge=false", "--bridge", "br-pods")
    assert code == 2 and "+ link br-pods type bridge" in out
    code, out, _ = run(capsys, *OFFLINE[:-1], "--offline=false", "--live-file", str(ROOT / "tests" / "__init__.py"))
    assert code == 1      # the live file is read (and is no JSON), not refused as a contradiction


@pytest.mark.parametrize("argv", [OFFLINE, ["snapshot", "--leases-file", EXAMPLE]])
def test_a_closed_stdout_is_an_error_not_a_bug(argv):
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "reconciler", *argv],
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert proc.stderr == f"error: standard output is closed: {argv[0]} writes its result there\n"


def test_an_endless_input_file_is_refused_not_read_forever(capsys):
    code, _, err = run(capsys, "plan", "--leases-file", "/dev/zero", "--public-ip", "198.18.0.1", "--offline")
    assert code == 1
    assert one_error(err) == ("error: --leases-file /dev/zero: larger than 64 MiB: not a snapshot or live state "
                              "(a device such as /dev/zero?)")
