"""flanneld's own command lines, as flannel's manifests and documentation write them, work unchanged.

Each line below is quoted from flannel (the file it comes from is named beside it); each is run
through the ``flanneld`` entry point's parser, which must accept it (or refuse the Kubernetes
flags with the reason) and give the values flanneld would.  Two of them then start a real agent
against a real etcd in a namespace: the lease, ``subnet.env``, the log level ``-v`` asks for and
the blackhole route ``-ip-blackhole-route`` asks for are checked in etcd, the file and the kernel.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.cli import flags
from reconciler.cli.main import flanneld_main, main, parse_args
from reconciler.core.desired import BLACKHOLE_METRIC

ROOT = Path(__file__).resolve().parent.parent

#: ``Documentation/configuration.md``, "Key command line options", each with the default it shows
#: (``--iface=""`` and ``--iface-regex=""`` left out: an empty interface name matches nothing, in
#: flanneld too; ``--kube-subnet-mgr`` is tested as refused below).
CONFIGURATION_MD = [
    '--public-ip=', "--etcd-endpoints=http://127.0.0.1:4001", "--etcd-prefix=/coreos.com/network",
    "--etcd-keyfile=", "--etcd-certfile=", "--etcd-cafile=", "--iface-can-reach=192.168.1.1",
    "--iptables-forward-rules", "--iptables-resync=5", "--subnet-file=/run/flannel/subnet.env",
    "--net-config-path=/etc/kube-flannel/net-conf.json", "--subnet-lease-renew-margin=60", "--ip-masq=false",
    "-v=0", "--healthz-ip=0.0.0.0", "--healthz-port=0",
]

ACCEPTED = [
    # (where, argv, environment, expected values)
    ("Documentation/kube-flannel.yml, args without --kube-subnet-mgr", ["--ip-masq", "--healthz-port=8081"], {},
     {"command": "run", "ip_masq": True, "healthz_port": 8081}),
    ("Documentation/running.md: flanneld with no arguments", [], {},
     {"command": "run", "etcd_endpoints": ("http://127.0.0.1:4001", "http://127.0.0.1:2379"),
      "etcd_prefix": "/coreos.com/network", "subnet_file": "/run/flannel/subnet.env", "log_level": "info",
      "subnet_lease_renew_margin": 60, "ip_blackhole_route": False}),
    ("Documentation/running.md, multiple networks", ["-subnet-file", "/vxlan.env", "-etcd-prefix=/vxlan/network"],
     {}, {"subnet_file": "/vxlan.env", "etcd_prefix": "/vxlan/network"}),
    ("Documentation/configuration.md, key command line options", CONFIGURATION_MD, {},
     {"public_ip": None, "etcd_endpoints": ("http://127.0.0.1:4001",), "iface_can_reach": "192.168.1.1",
      "iptables_forward_rules": True, "iptables_resync": 5, "subnet_lease_renew_margin": 60, "ip_masq": False,
      "v": 0, "log_level": "info", "healthz_ip": "0.0.0.0", "healthz_port": 0}),
    ("Documentation/configuration.md, environment variables", [],
     {"FLANNELD_ETCD_ENDPOINTS": "http://10.0.0.2:2379"}, {"etcd_endpoints": ("http://10.0.0.2:2379",)}),
    ("Documentation/troubleshooting.md: the most detailed logs", ["-v=10"], {}, {"v": 10, "log_level": "debug"}),
    ("chart/kube-flannel/values.yaml's --v=2, as a variable", [], {"FLANNELD_V": "2"},
     {"v": 2, "log_level": "debug"}),
    ("a flanneld.service ExecStart", ["-etcd-endpoints=http://198.18.0.5:2379", "-iface=eth0", "-ip-masq"], {},
     {"etcd_endpoints": ("http://198.18.0.5:2379",), "iface": ("eth0",), "ip_masq": True}),
    ("main.go's renewal margin and blackhole route", ["-subnet-lease-renew-margin=30", "-ip-blackhole-route"], {},
     {"subnet_lease_renew_margin": 30, "ip_blackhole_route": True}),
    ("Documentation/configuration.md's -v beside --log-level: ours wins", ["-v=2", "--log-level=warning"], {},
     {"v": 2, "log_level": "warning"}),
]


@pytest.mark.parametrize("where,argv,env,want", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_flanneld_command_lines_are_accepted_with_flanneld_values(where, argv, env, want):
    args = parse_args(argv, environ=env, flanneld=True)
    assert {k: getattr(args, k) for k in want} == want


REFUSED = [
    ("Documentation/kube-flannel.yml, args as they are", ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"],
     {}, "error: flanneld flag -kube-subnet-mgr is not supported by flannel-reconciler: kube subnet manager mode"),
    ("chart/kube-flannel/values.yaml, the variable form", [], {"FLANNELD_KUBE_SUBNET_MGR": "true"},
     "error: FLANNELD_KUBE_SUBNET_MGR='true': flanneld flag -kube-subnet-mgr is not supported"),
    ("main.go validates the margin", ["-subnet-lease-renew-margin=1440"], {},
     "error: --subnet-lease-renew-margin '1440': the lease renewal margin (minutes, less than the 24 h lease) "
     "must be between 1 and 1439"),
    ("main.go validates the margin", ["-subnet-lease-renew-margin=0"], {}, "error: --subnet-lease-renew-margin '0'"),
    ("a mistyped flag", ["--public_ip=198.18.0.1"], {}, "error: unknown flag --public_ip: did you mean --public-ip?"),
    ("Go's boolean rule", ["--ip-masq", "false"], {},
     "error: --ip-masq false: a boolean flag never takes the next word; write --ip-masq=false"),
]


@pytest.mark.parametrize("where,argv,env,start", REFUSED, ids=[r[0] + " " + " ".join(r[1]) for r in REFUSED])
def test_flanneld_command_lines_refused_with_one_line_naming_why(where, argv, env, start, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("FLANNELD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert flanneld_main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(start), err


@pytest.mark.parametrize("argv", [["-version"], ["--version"], ["-etcd-endpoints=http://x:1", "-version"]])
def test_version_in_flanneld_forms(argv, capsys):
    assert flanneld_main(argv) == 0
    assert capsys.readouterr().out.startswith("flannel-reconciler ")


def test_flannel_reconciler_with_a_flag_first_means_run_and_with_nothing_prints_usage(capsys):
    assert parse_args(["-etcd-endpoints=http://198.18.0.5:2379", "-ip-masq"], environ={}).command == "run"
    assert parse_args(["-v=2"], environ={}).log_level == "debug"
    assert main([]) == 1        # never an agent started by accident
    assert "the following arguments are required: command" in capsys.readouterr().err
    assert main(["--leases-file", "x.json", "plan"]) == 1
    assert capsys.readouterr().err == "error: options go after the command: flannel-reconciler plan --leases-file x.json\n"


def test_every_command_is_known_to_the_options_first_check(capsys):
    # The check that says "options go after the command" knows the parser's every command.
    import argparse
    from reconciler.cli.flags import COMMAND_NAMES
    from reconciler.cli.main import build_parser
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == COMMAND_NAMES
    assert main(["--etcd-endpoints", "http://127.0.0.1:1", "explain", "100.64.1.5"]) == 1
    assert capsys.readouterr().err == ("error: options go after the command: flannel-reconciler explain "
                                       "--etcd-endpoints http://127.0.0.1:1 100.64.1.5\n")


def test_the_flanneld_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'flanneld = "reconciler.cli.entry:flanneld_main"' in text
    assert 'flannel-reconciler = "reconciler.cli.entry:main"' in text


# ------------------------------------------------------------ a real agent, started the flanneld way

CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'


def _wait(what: str, check, proc: subprocess.Popen, limit: float = 60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the agent exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _blackholes(ns: str) -> list[dict]:
    from tests.netns import run

    return [r for r in json.loads(run(ns, "ip", "-j", "route", "show", "table", "main").stdout)
            if r.get("type") == "blackhole"]


@pytest.mark.root
@pytest.mark.etcd
def test_running_md_command_line_runs_a_real_agent(etcd_server, underlay_factory, tmp_path):
    """``flanneld -subnet-file /vxlan.env -etcd-prefix=/vxlan/network`` (running.md) plus a unit's
    ``-etcd-endpoints``/``-iface``/``-ip-masq``/``-v=2``/``-ip-blackhole-route``/``-subnet-lease-renew-margin``;
    ``--netns`` (ours) says which namespace is the node."""
    from reconciler.etcd.store import EtcdStore
    from tests.netns import run

    ns = underlay_factory(1).nodes[0].ns
    with EtcdStore([etcd_server.endpoint], prefix="/vxlan/network") as store:
        store.put_config(CONFIG)
        subnet_file = tmp_path / "vxlan.env"
        argv = ["-subnet-file", str(subnet_file), "-etcd-prefix=/vxlan/network",
                f"-etcd-endpoints={etcd_server.endpoint}", "-iface=eth0", "-ip-masq", "-v=2",
                "-ip-blackhole-route", "-subnet-lease-renew-margin=30", "--netns", ns]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from reconciler.cli.main import flanneld_main; "
                                   "sys.exit(flanneld_main())", *argv],
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            text = _wait("subnet.env", lambda: subnet_file.exists() and subnet_file.read_text(), proc)
            env_file = dict(line.split("=", 1) for line in text.splitlines())
            assert env_file["FLANNEL_NETWORK"] == "100.64.0.0/16" and env_file["FLANNEL_IPMASQ"] == "true"
            subnet = env_file["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24"
            leases = store.snapshot().kvs
            mine = [kv for kv in leases if kv.key.startswith("/vxlan/network/subnets/")]
            assert len(mine) == 1 and '"PublicIP":"198.18.0.1"' in mine[0].value and mine[0].lease
            assert mine[0].key.endswith(subnet.replace("/", "-"))
            hole = _wait("the blackhole route", lambda: _blackholes(ns), proc)
            assert hole == [{"type": "blackhole", "dst": subnet, "protocol": "73", "metric": BLACKHOLE_METRIC,
                             "flags": []}]
            # Removed by hand: the agent puts it back (the netlink event, at the latest the resync).
            run(ns, "ip", "route", "del", "blackhole", subnet, "metric", str(BLACKHOLE_METRIC))
            _wait("the blackhole route repaired", lambda: _blackholes(ns), proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert " INFO log level debug (from -v=2)\n" in err     # flanneld's data-path detail: our debug
        assert "Traceback" not in err


@pytest.mark.etcd
def test_kube_flannel_args_as_written_are_refused_before_anything_starts(etcd_server):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from reconciler.cli.main import flanneld_main; sys.exit(flanneld_main())",
         "--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081", f"--etcd-endpoints={etcd_server.endpoint}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {flags._UNSUPPORTED['kube-subnet-mgr'].refusal()}\n"
