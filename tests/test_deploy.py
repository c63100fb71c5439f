"""deploy/: what can be checked without a cluster or an image build.

* the systemd unit passes ``systemd-analyze verify``, is ``Type=notify``, cannot hold kubelet
  back for ever, and ``systemd-analyze security`` rates its sandbox "OK" (exposure at most 3.0);
  tests/test_systemd_boot.py runs it in a booted systemd;
* the DaemonSet parses as YAML and has what the agent needs (host network, NET_ADMIN and
  NET_RAW, /run/flannel and the xtables lock, probes on the ports the agent serves), and its
  arguments are flags the agent accepts; it and the example Secret validate against the
  Kubernetes API's schema (kubernetes-validate, strict);
* the Dockerfile installs its Debian packages with the script CI uses (.ci/install-deps),
  and copies only what exists.

tests/test_image.py builds the image and runs the DaemonSet's container with podman.
"""
from __future__ import annotations

import configparser
import json
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

def _documents(name: str = "daemonset.yaml") -> list[dict]:
    import yaml  # PyYAML: in the test extras

    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _daemonset() -> dict:
    docs = _documents()
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
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {mounts[name]: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v and name in mounts}
    assert host == {"/run/flannel": "/run/flannel", "/run/xtables.lock": "/run/xtables.lock",
                    "/run/flannel-reconciler": "/run/flannel-reconciler"}
    assert {"operator": "Exists"} in spec["tolerations"]


def test_the_daemonset_needs_no_cluster_dns_no_token_and_runs_on_linux_only():
    spec = _daemonset()["spec"]["template"]["spec"]
    # Cluster DNS runs in pods, whose network this agent builds: the node's resolver only.
    assert spec["dnsPolicy"] == "Default"
    c = spec["containers"][0]
    endpoints = next(e["value"] for e in c["env"] if e["name"] == "FLANNELD_ETCD_ENDPOINTS")
    import ipaddress
    from urllib.parse import urlsplit
    for url in endpoints.split(","):
        ipaddress.ip_address(urlsplit(url).hostname)      # an address, no name to resolve
    assert spec["automountServiceAccountToken"] is False
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]


def test_init_containers_install_the_flannel_cni_plugin_and_config_as_kube_flannel_does():
    import json

    docs = _documents()
    spec = _daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    inits = {c["name"]: c for c in spec["initContainers"]}
    plugin, conf = inits["install-cni-plugin"], inits["install-cni"]
    assert plugin["command"] + plugin["args"] == ["cp", "-f", "/flannel", "/opt/cni/bin/flannel"]
    (m,) = plugin["volumeMounts"]
    assert m["mountPath"] == "/opt/cni/bin" and volumes[m["name"]]["hostPath"]["path"] == "/opt/cni/bin"
    assert conf["command"] + conf["args"] == ["cp", "-f", "/etc/kube-flannel/cni-conf.json",
                                              "/etc/cni/net.d/10-flannel.conflist"]
    mounts = {x["mountPath"]: volumes[x["name"]] for x in conf["volumeMounts"]}
    assert mounts["/etc/cni/net.d"]["hostPath"]["path"] == "/etc/cni/net.d"
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert mounts["/etc/kube-flannel"]["configMap"]["name"] == cm["metadata"]["name"]
    # The conflist: the flannel plugin with kube-flannel's delegate (the one the lab's CNI calls use).
    from reconciler.tools.lab.cni import STOCK_DELEGATE

    conflist = json.loads(cm["data"]["cni-conf.json"])
    assert [p["type"] for p in conflist["plugins"]] == ["flannel", "portmap"]
    assert conflist["plugins"][0]["delegate"] == dict(STOCK_DELEGATE)
    # The config is copied by this project's image, the agent's own.
    assert conf["image"] == spec["containers"][0]["image"]


def test_the_etcd_secret_the_daemonset_mounts_is_defined_with_the_keys_it_reads():
    spec = _daemonset()["spec"]["template"]["spec"]
    c = spec["containers"][0]
    pki = next(v for v in spec["volumes"] if v["name"] == "etcd-pki")["secret"]["secretName"]
    mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "etcd-pki")
    (secret,) = _documents("etcd-pki-secret.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == pki
    assert secret["metadata"]["namespace"] == _daemonset()["metadata"]["namespace"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    files = {env[k] for k in ("FLANNELD_ETCD_CAFILE", "FLANNELD_ETCD_CERTFILE", "FLANNELD_ETCD_KEYFILE")}
    assert files == {f"{mount}/{key}" for key in secret["stringData"]}


def test_memory_requests_cover_the_measured_rss():
    """The cluster-scale benchmark's results the README shows (docs/bench/bench-*.json, the newest
    run holding each size): the agent's RSS after convergence and after 1,000 changes."""
    rss: dict[int, float] = {}
    for path in sorted((ROOT / "docs" / "bench").glob("bench-*.json")):     # oldest first: newer wins
        for n, run in json.loads(path.read_text())["runs"].items():
            got = [f["value"] for f in run["figures"] if f["scenario"] == "memory" and f["value"] is not None]
            if got:
                rss[int(n)] = max(got)
    assert {5000, 20000} <= set(rss), sorted(rss)
    res = _daemonset()["spec"]["template"]["spec"]["containers"][0]["resources"]

    def mib(q: str) -> int:
        assert q.endswith("Mi"), q
        return int(q[:-2])

    # A quarter of headroom: the request at 5,000 nodes, the limit (never an OOM kill) at 20,000.
    assert mib(res["requests"]["memory"]) >= 1.25 * rss[5000]
    assert mib(res["limits"]["memory"]) >= 1.25 * rss[20000]


@pytest.mark.parametrize("name", ["daemonset.yaml", "etcd-pki-secret.yaml"])
def test_the_manifests_validate_against_the_kubernetes_api_schema(name):
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for doc in _documents(name):
        # strict: an unknown or misspelt field is an error, as `kubectl apply --validate=strict` says.
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_would_catch_a_misspelt_field():
    import kubernetes_validate

    ds = _daemonset()
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)


# --------------------------------------------------------------- Dockerfile

def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _stages() -> list[list[str]]:
    """The instructions split into stages (what comes before the first FROM is left out)."""
    stages: list[list[str]] = []
    for line in _instructions():
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_installs_what_ci_installs_with_the_same_script():
    # The base is a build argument (tests/test_image.py builds from a local Debian), Debian's
    # own bookworm by default, whose python3 runs the agent.
    head = _instructions()[0]
    assert re.fullmatch(r"ARG BASE=\S*debian:bookworm(-slim)?", head), head
    stages = _stages()
    assert len(stages) == 2
    for stage in stages:
        assert re.fullmatch(r"FROM \$\{BASE\}( AS \w+)?", stage[0]), stage[0]
        assert "COPY .ci/install-deps /usr/local/sbin/install-deps" in stage
    build, runtime = stages
    assert "RUN /usr/local/sbin/install-deps image-build" in build
    assert any(i.startswith("RUN /usr/local/sbin/install-deps image-runtime") for i in runtime)
    # No package is installed any other way.
    assert not any("apt-get" in i or "apk " in i for stage in stages for i in stage)
    # CI installs the same script's "test" set, which holds what the image has but Debian's Python
    # (CI has its own).
    assert "bash .ci/install-deps test" in (ROOT / ".ci" / "setup").read_text()
    assert {"iproute2", "iptables", "nftables"} <= set(_packages("runtime"))
    assert set(_packages("runtime")) | set(_packages("build")) <= set(_packages("test"))
    assert set(_packages("image-runtime")) - set(_packages("runtime")) == {"python3"}
    assert set(_packages("build")) <= set(_packages("image-build"))
    assert runtime[-1] == 'ENTRYPOINT ["flannel-reconciler", "run"]'
    # The venv, with the fast path compiled (checked in the build), is what the runtime runs.
    assert any("pip install" in i and "_fastpath.AVAILABLE" in i for i in build)
    assert "COPY --from=build /opt/flannel-reconciler /opt/flannel-reconciler" in runtime


def test_the_image_copies_only_what_exists():
    for stage in _stages():
        for instr in stage:
            if instr.startswith("COPY ") and "--from=" not in instr:
                for src in instr.split()[1:-1]:
                    assert (ROOT / src).exists(), src
