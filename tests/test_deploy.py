"""deploy/: what can be checked without a cluster or an image build.

* the systemd unit passes ``systemd-analyze verify``, is ``Type=notify``, cannot hold kubelet
  back for ever, and ``systemd-analyze security`` rates its sandbox "OK" (exposure at most 3.0);
  tests/test_systemd_boot.py runs it in a booted systemd;
* the DaemonSet parses as YAML and has what the agent needs (host network, NET_ADMIN and
  NET_RAW, /run/flannel and the xtables lock, probes on the ports the agent serves), and its
  arguments are flags the agent accepts;
* the Dockerfile installs its Debian packages with the script CI uses (.ci/install-deps),
  and copies only what exists.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "flannel-reconciler.service"


def _packages(mode: str) -> list[str]:
    out = subprocess.run(["bash", str(ROOT / ".ci" / "install-deps"), "--print", mode],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


# ------------------------------------------------------------------ systemd

def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp


def _settings(section: str, key: str) -> list[str]:
    """Every value of a setting that may be repeated (configparser keeps the last one only)."""
    values, current = [], None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(key + "="):
            values.append(line.split("=", 1)[1])
    return values


def test_the_unit_is_type_notify_with_a_watchdog_and_runs_the_agent():
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"      # a resync (test_sdnotify), not a stop
    assert service["ExecStart"].split()[-2:] == ["flannel-reconciler", "run"] or \
        service["ExecStart"].endswith("/flannel-reconciler run")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(service["ExecStart"].split()[0]).name in scripts
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["EnvironmentFile"] == "-/etc/default/flannel-reconciler"


def test_the_unit_makes_the_directories_the_agent_writes():
    """Under ProtectSystem=strict only listed paths are writable: subnet.env's directory, the lock
    directory (a fixed path, so that apply from a shell finds the agent's lock), and the xtables lock."""
    from reconciler.agent.instance_lock import LOCK_DIR
    from reconciler.cli.flags import FLAGS

    service = _unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    subnet_dir = os.path.dirname(next(f.default for f in FLAGS if f.name == "subnet-file"))
    runtime = {f"/run/{d}" for d in service["RuntimeDirectory"].split()}
    assert {subnet_dir, LOCK_DIR} <= runtime
    assert "-/run/xtables.lock" in _settings("Service", "ReadWritePaths")
    # ReadWritePaths= can only open up a file that exists when the sandbox is built.
    assert "+/usr/bin/touch /run/xtables.lock" in _settings("Service", "ExecStartPre")


def test_the_unit_cannot_hold_kubelet_back_for_ever():
    """Where etcd is a static pod, kubelet and its runtime must run for etcd to exist, and the
    agent is not READY without etcd: no ordering before them, and no endless start."""
    unit = _unit()
    before = " ".join(_settings("Unit", "Before")).split()
    assert not {"kubelet.service", "containerd.service", "docker.service", "crio.service"} & set(before)
    timeout = unit["Service"]["TimeoutStartSec"]
    assert timeout != "infinity" and int(timeout) > 0


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # CI installs systemd (.ci/install-deps test): there a missing tool is a failure.
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail("systemd-analyze is not installed (apt-get install systemd)", pytrace=False)
        pytest.skip("systemd-analyze is not installed (not root and CI unset)")
    return tool


def _exposure(tool: str, unit: Path) -> tuple[float, str]:
    proc = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1)), m.group(2)


def test_the_sandbox_is_rated_ok_by_systemd_analyze_security(tmp_path):
    tool = _analyze()
    exposure, verdict = _exposure(tool, UNIT)
    assert exposure <= 3.0 and verdict == "OK", (exposure, verdict)
    # The threshold means something: without its sandbox the same unit is rated far worse.
    bare = tmp_path / UNIT.name
    bare.write_text("\n".join(line for line in UNIT.read_text().splitlines()
                              if not re.match(r"(Protect|Private|Restrict|SystemCall|Capability|Lock|Memory"
                                              r"|NoNew|UMask|Keyring)", line)))
    assert _exposure(tool, bare)[0] > 6.0


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    tool = _analyze()
    # verify insists that ExecStart exists: point it at an executable that does.
    text = UNIT.read_text().replace("/usr/local/bin/flannel-reconciler", sys.executable)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Warnings (a misspelt setting, a bad value) leave the exit status 0: any output is a finding.
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr


def test_verify_would_catch_a_bad_setting(tmp_path):
    tool = _analyze()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/flannel-reconciler", sys.executable)
                    .replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in proc.stderr


# ---------------------------------------------------------------- DaemonSet

def _daemonset() -> dict:
    import yaml  # PyYAML: in the test extras

    docs = [d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("DaemonSet") == 1, kinds
    return next(d for d in docs if d["kind"] == "DaemonSet")


def test_the_daemonset_runs_on_the_host_network_with_two_capabilities():
    spec = _daemonset()["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["privileged"] is False
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {mounts[name]: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v}
    assert host == {"/run/flannel": "/run/flannel", "/run/xtables.lock": "/run/xtables.lock"}
    assert {"operator": "Exists"} in spec["tolerations"]


def test_the_probes_ask_the_port_the_agent_serves_and_the_args_parse():
    from reconciler.cli.main import parse_args

    c = _daemonset()["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "198.18.0.1") for e in c["env"]}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    parsed = parse_args(["run", *args], environ={})   # the flag table checks and types every value
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": parsed.healthz_port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": parsed.healthz_port}
    assert parsed.metrics_port == parsed.healthz_port == c["ports"][0]["containerPort"]
    # The etcd settings come in as FLANNELD_* variables, which the agent reads.
    assert {"FLANNELD_ETCD_ENDPOINTS", "FLANNELD_ETCD_CAFILE", "FLANNELD_ETCD_CERTFILE",
            "FLANNELD_ETCD_KEYFILE"} <= set(env)
    assert c["image"].endswith(":" + tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


# --------------------------------------------------------------- Dockerfile

def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into stages."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_image_installs_what_ci_installs_with_the_same_script():
    stages = _stages()
    assert len(stages) == 2
    for stage in stages:
        assert re.fullmatch(r"FROM python:3\.\d+-slim-bookworm( AS \w+)?", stage[0]), stage[0]
        assert "COPY .ci/install-deps /usr/local/sbin/install-deps" in stage
    build, runtime = stages
    assert "RUN /usr/local/sbin/install-deps build" in build
    assert any(i.startswith("RUN /usr/local/sbin/install-deps runtime") for i in runtime)
    # No package is installed any other way.
    assert not any("apt-get" in i or "apk " in i for stage in stages for i in stage)
    # CI installs the same script's "test" set, which holds everything the image has.
    assert "bash .ci/install-deps test" in (ROOT / ".ci" / "setup").read_text()
    assert {"iproute2", "iptables", "nftables"} <= set(_packages("runtime"))
    assert set(_packages("runtime")) | set(_packages("build")) <= set(_packages("test"))
    assert runtime[-1] == 'ENTRYPOINT ["flannel-reconciler", "run"]'
    # The wheel (with the compiled fast path, checked in the build) is what the runtime installs.
    assert any("pip wheel" in i and "_fastpath.AVAILABLE" in i for i in build)
    assert "COPY --from=build /wheels /wheels" in runtime


def test_the_image_copies_only_what_exists():
    for stage in _stages():
        for instr in stage:
            if instr.startswith("COPY ") and "--from=" not in instr:
                for src in instr.split()[1:-1]:
                    assert (ROOT / src).exists(), src
