"""The container image, built from deploy/Dockerfile and run as deploy/daemonset.yaml runs it.

One test, with podman (docs/container.md):

1. the base: ``mmdebstrap --variant=apt bookworm`` into a tarball, ``podman import``-ed as
   ``localhost/debian:bookworm`` (both kept between local runs: the tarball in
   ``/var/cache/flannel-reconciler-tests/image``, the image in podman's default store; a fresh
   machine, as in CI, makes them);
2. ``podman build --build-arg BASE=localhost/debian:bookworm``, with ``--network host`` so apt
   and pip in the build reach their registries, and pip's CA file and index from the host's pip
   configuration (``pip config list``) passed in as a read-only volume and build arguments;
3. two node namespaces on a veth underlay, etcd (TLS, client certificates) in the hub namespace
   on the underlay's gateway address, so both nodes reach it by address, as the DaemonSet's
   nodes do;
4. per node the ``install-cni`` init container, then the agent's container, each with podman
   flags derived from the pod spec (so the two cannot drift): its capabilities only
   (``--cap-drop ALL --cap-add NET_ADMIN,NET_RAW``), not privileged (/proc/sys read-only), no
   new privileges, a read-only root, its environment and arguments, and its volumes (hostPath
   volumes from a directory per node, the Secret and the ConfigMap as files), in the node's
   namespace (``--network ns:/run/netns/NODE``; hostNetwork);
5. ready as the readinessProbe asks (``/readyz`` on the node's address), nothing reported
   failed, one warning about accept_ra, and a CNI pod on each node pinging the other.

podman's configuration is a ``containers.conf`` of the test's own (``CONTAINERS_CONF``): no
default ulimits (they cannot be raised in this sandbox) and the cgroupfs manager (no systemd);
the OCI runtime is runc.  Everything made here is removed afterwards but the base and the
image's two stages, which a later run reuses (it removes the images an earlier run built and
this one replaced).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from reconciler.kernel.netlink.common import in_netns, netns_path
from reconciler.tools.lab import cni as lab_cni
from tests.conftest_netns import require_root
from tests.etcd_server import EtcdServer, etcd_available, make_tls_files
from tests.netns import GATEWAY, ip_json, netns, run, underlay, unique_name

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CACHE = Path("/var/cache/flannel-reconciler-tests/image")
BASE = "localhost/debian:bookworm"
IMAGE = "localhost/flannel-reconciler:test"     # and its build stage: IMAGE + "-build"
PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
"""
WARNING = "accept_ra=0 could not be set"
READY_TIMEOUT = 90.0


# ------------------------------------------------------------------ podman

def _require_tools() -> None:
    require_root()
    missing = [t for t in ("podman", "runc", "mmdebstrap") if shutil.which(t) is None]
    missing += [] if etcd_available() else ["etcd"]
    missing += [] if os.path.isdir(lab_cni.CNI_PATH) else [lab_cni.CNI_PATH]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing in CI: {', '.join(missing)} (.ci/setup installs them)")
        pytest.skip(f"not installed: {', '.join(missing)} (.ci/install-deps test installs them)")


class Podman:
    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stderr[-3000:]}{proc.stdout[-3000:]}")
        return proc


def _base_image(podman: Podman) -> None:
    """``localhost/debian:bookworm``: a minimal Debian with apt, made here and reused."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / "debian-bookworm.tar"
    if not tar.exists():
        part = tar.with_suffix(".part.tar")
        subprocess.run(["mmdebstrap", "--quiet", "--variant=apt", "--format=tar", "bookworm", str(part)],
                       check=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
        part.rename(tar)
    podman("import", str(tar), BASE, timeout=300)


def _pip_settings() -> dict[str, str]:
    """pip's effective settings on this host (``pip config list``: files and PIP_* variables)."""
    out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True,
                         timeout=60).stdout
    settings = {}
    for line in out.splitlines():
        m = re.fullmatch(r"[^.]*\.([\w-]+)='(.*)'", line.strip())
        if m:
            settings[m.group(1)] = m.group(2)
    return settings


def _build_image(podman: Podman) -> None:
    # pip in the build stage reaches the package registry as pip on this host does: with the
    # host's CA file (the registry may be reached through a proxy whose CA only that file has)
    # and its index URL.  Both go in as build arguments, which the RUN steps see in their
    # environment and which no layer keeps; the CA file as a read-only volume of the build.
    pip = _pip_settings()
    args = ["build", "--runtime", "runc", "--network", "host", "-f", str(DEPLOY / "Dockerfile"),
            "--build-arg", f"BASE={BASE}"]
    cert = pip.get("cert") or os.environ.get("PIP_CERT")
    if cert and os.path.isfile(cert):
        args += ["--volume", f"{os.path.realpath(cert)}:/run/pip-ca.crt:ro", "--build-arg", "PIP_CERT=/run/pip-ca.crt"]
    if pip.get("index-url", "").startswith(("http://", "https://")):
        args += ["--build-arg", f"PIP_INDEX_URL={pip['index-url']}"]
    # Both stages are tagged, so the next run finds their layers cached; what an earlier run
    # built and this one replaced is removed (by image id, its own only: the store may be shared).
    old = {}
    for tag in (IMAGE + "-build", IMAGE):
        proc = podman("image", "inspect", "-f", "{{.Id}}", tag, check=False)
        old[tag] = proc.stdout.strip() if proc.returncode == 0 else None
    podman(*args, "--target", "build", "-t", IMAGE + "-build", str(ROOT), timeout=900)
    podman(*args, "-t", IMAGE, str(ROOT), timeout=900)
    for tag, image_id in old.items():
        if image_id and podman("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip() != image_id:
            podman("rmi", image_id, check=False)


# ------------------------------------------------------------------ the pod spec

def _manifest() -> tuple[dict, dict, dict]:
    import yaml

    docs = [d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d]
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    [secret] = [d for d in yaml.safe_load_all((DEPLOY / "etcd-pki-secret.yaml").read_text()) if d]
    return ds["spec"]["template"]["spec"], cm, secret


def _podman_args(container: dict, spec: dict, *, node_ns: str, node_ip: str, node_dir: Path,
                 files: dict[str, dict[str, bytes]], env_override: dict[str, str]) -> list[str]:
    """``podman run`` flags for one container of the pod spec, on one node.

    hostPath volumes come from ``node_dir/<volume name>``; Secret and ConfigMap volumes are
    written from ``files[volume name]`` (file name -> content).  Any field of the spec this
    does not know how to run is an error, so a change to the manifest cannot be silently left out.
    """
    assert spec["hostNetwork"] is True
    args = ["--network", f"ns:/run/netns/{node_ns}", "--runtime", "runc"]
    sc = dict(container.get("securityContext", {}))
    assert sc.pop("privileged", False) is False
    caps = sc.pop("capabilities", {})
    args += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    if caps.get("add"):
        args += ["--cap-add", ",".join(caps["add"])]
    if sc.pop("allowPrivilegeEscalation", True) is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.pop("readOnlyRootFilesystem", False):
        # Kubernetes mounts no tmpfs of its own on a read-only root: neither does podman here.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in sc:
        args += ["--user", str(sc.pop("runAsUser"))]
    assert not sc, f"securityContext fields this test does not run: {sorted(sc)}"

    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}, e
            env[e["name"]] = node_ip     # hostNetwork: the node's address
    env.update(env_override)
    args += [x for name, value in env.items() for x in ("--env", f"{name}={value}")]

    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        src = node_dir / m["name"]
        if "hostPath" in vol:
            kind = vol["hostPath"]["type"]
            if kind == "DirectoryOrCreate":
                src.mkdir(parents=True, exist_ok=True)
            else:
                assert kind == "FileOrCreate", kind
                src.touch()
        else:
            source = vol.get("secret") or vol.get("configMap")
            assert source is not None, vol
            src.mkdir(parents=True, exist_ok=True)
            for fname, content in files[m["name"]].items():
                (src / fname).write_bytes(content)
                (src / fname).chmod(source.get("defaultMode", 0o644))
        args += ["--volume", f"{src}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    # The image under test, then the arguments with $(VAR) expanded as the kubelet does.
    args.append(IMAGE)
    args += [re.sub(r"\$\((\w+)\)", lambda x: env[x.group(1)], a) for a in container.get("args", [])]
    return args


def _http_get(ns: str, url: str) -> tuple[int | None, str]:
    """GET from inside the node's namespace, where the kubelet's probe comes from."""
    def get() -> tuple[int | None, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return None, ""

    return in_netns(netns_path(ns), get)


# ------------------------------------------------------------------ the test

def test_the_image_runs_two_nodes_with_the_daemonsets_security_context_and_pods_ping(tmp_path):
    _require_tools()
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    podman = Podman(conf)
    _base_image(podman)
    _build_image(podman)

    spec, configmap, secret = _manifest()
    [agent] = spec["containers"]
    [install_cni] = [c for c in spec["initContainers"] if c["name"] == "install-cni"]
    # The other init container copies flannel's CNI plugin from flannel's image, which cannot be
    # fetched here; the pods below get the bridge config that plugin would hand on
    # (reconciler.tools.lab.cni).
    assert {c["name"] for c in spec["initContainers"]} == {"install-cni", "install-cni-plugin"}

    with ExitStack() as stack:
        net = stack.enter_context(underlay(2))
        pki = make_tls_files(tmp_path / "pki", server_ips=[GATEWAY])
        etcd = stack.enter_context(EtcdServer(netns=net.hub, host=GATEWAY, tls=pki))
        etcd.ctl("put", f"{PREFIX}/config", CONFIG)

        # The Secret's keys, as the kubelet would write them from the real Secret.
        secret_files = {"ca.crt": pki.ca.read_bytes(), "tls.crt": pki.client_cert.read_bytes(),
                        "tls.key": pki.client_key.read_bytes()}
        assert set(secret_files) == set(secret["stringData"])
        files = {"etcd-pki": secret_files,
                 "cni-cfg": {k: v.encode() for k, v in configmap["data"].items()}}
        override = {"FLANNELD_ETCD_ENDPOINTS": etcd.endpoint}   # the one cluster-specific value

        names = []
        stack.callback(lambda: [podman("rm", "-f", "-t", "0", n, check=False) for n in names])
        nodes = []
        for i, node in enumerate(net.nodes, 1):
            node_dir = tmp_path / f"node{i}"
            common = dict(spec=spec, node_ns=node.ns, node_ip=node.ip, node_dir=node_dir, files=files,
                          env_override=override)
            name = unique_name(f"node{i}")
            names += [name + "-init", name]
            podman("run", "--name", name + "-init", *_podman_args(install_cni, **common))
            podman("run", "-d", "--name", name, *_podman_args(agent, **common))
            nodes.append((node, node_dir, name))

        # kube-flannel's CNI config, installed on the node by the init container.
        for _node, node_dir, _name in nodes:
            conflist = json.loads((node_dir / "cni" / "10-flannel.conflist").read_text())
            assert conflist == json.loads(configmap["data"]["cni-conf.json"])

        port = agent["readinessProbe"]["httpGet"]["port"]
        path = agent["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + READY_TIMEOUT
        for node, _node_dir, name in nodes:
            while _http_get(node.ns, f"http://{node.ip}:{port}{path}")[0] != 200:
                state = podman("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
                if state != "running" or time.monotonic() > deadline:
                    logs = podman("logs", name, check=False)
                    pytest.fail(f"{name} not ready ({state}):\n{(logs.stdout + logs.stderr)[-4000:]}")
                time.sleep(0.2)

        for node, _node_dir, name in nodes:
            logs = podman("logs", name)
            log = logs.stdout + logs.stderr
            # /proc/sys is read-only in the container: said once, and nothing reported failed.
            assert log.count(WARNING) == 1 and "EROFS" in log, log
            assert "Traceback" not in log, log
            assert re.findall(r"\bfailed=(\d+)", log) and set(re.findall(r"\bfailed=(\d+)", log)) == {"0"}, log
            status, metrics = _http_get(node.ns, f"http://{node.ip}:{port}/metrics")
            assert status == 200
            assert re.search(r'^flannel_reconciler_operations_total\{kind="link",op="create",result="ok"\} [1-9]',
                             metrics, re.M), metrics
            assert not re.search(r'result="error"\} [1-9]', metrics), metrics
            # The device is there, up; accept_ra kept the kernel's default: the container could not write it.
            [link] = ip_json(node.ns, "-d link show flannel.1")
            assert link["linkinfo"]["info_kind"] == "vxlan" and "UP" in link["flags"]
            assert run(node.ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout.strip() != "0"

        # A pod per node, made by the CNI bridge plugin from the subnet.env the container wrote into
        # the node's /run/flannel; then each pings the other across the VXLAN overlay.
        pods = []
        for i, (node, node_dir, _name) in enumerate(nodes, 1):
            pod_ns = stack.enter_context(netns(f"pod{i}"))
            cid = unique_name(f"pod{i}")
            cfg = lab_cni.flannel_delegate_config((node_dir / "run-flannel" / "subnet.env").read_text(),
                                                  data_dir=str(tmp_path / f"ipam{i}"))
            result = lab_cni.cni_add(node.ns, pod_ns, cid, cfg)
            stack.callback(lab_cni.cni_del, node.ns, pod_ns, cid, cfg)
            pods.append((pod_ns, result["ips"][0]["address"].split("/")[0]))
        for (src, _), (_, dst) in ((pods[0], pods[1]), (pods[1], pods[0])):
            ping = run(src, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
            assert ping.returncode == 0, f"{src} -> {dst}: {ping.stdout}{ping.stderr}"
