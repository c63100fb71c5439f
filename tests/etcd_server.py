"""Real etcd servers for tests: single member, 3-member cluster, TLS, auth.

Everything listens on 127.0.0.1 only, on free ports, with a private data
directory, and every process is stopped by its PID (``close()``).  Used by the
fixtures in ``tests/conftest_etcd.py``; usable directly as context managers::

    with EtcdServer() as srv:
        srv.endpoint            # "http://127.0.0.1:PORT"
        srv.kill(); srv.start() # same data dir, same ports
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = [
    "ETCD_BIN",
    "ETCDCTL_BIN",
    "EtcdCluster",
    "EtcdServer",
    "TLSFiles",
    "enable_auth",
    "etcd_available",
    "free_port",
    "make_tls_files",
]

ETCD_BIN = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL_BIN", "/usr/bin/etcdctl")
LOOPBACK = "127.0.0.1"


def etcd_available() -> bool:
    return os.access(ETCD_BIN, os.X_OK)


def free_port() -> int:
    """A port free on 127.0.0.1 right now.  There is a window before etcd binds
    it; ``EtcdServer.start`` retries with fresh ports if the bind loses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSFiles:
    """PEM files: a CA, a server cert for 127.0.0.1/localhost, a client cert it
    signed, and a client cert from an unrelated CA (to test rejection)."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def make_tls_files(directory: str | os.PathLike[str], client_cn: str = "root",
                   server_ips: Sequence[str] = ()) -> TLSFiles:
    """Generate the PEM files with ``cryptography`` (EC P-256, valid for a day).

    The server certificate names 127.0.0.1 and localhost, and ``server_ips`` too (an etcd
    listening in a namespace: ``EtcdServer(netns=..., host=...)``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    def write_cert(path: Path, cert: x509.Certificate) -> None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
                  server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if server:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName([
                           x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)), x509.DNSName("localhost"),
                           *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips)]),
                           critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                            critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("flannel-reconciler test CA")
    srv_key, srv_cert = make_leaf(ca_key, ca_cert, "etcd-server", server=True)
    cli_key, cli_cert = make_leaf(ca_key, ca_cert, client_cn, server=False)
    rogue_ca_key, rogue_ca_cert = make_ca("rogue CA")
    rogue_key, rogue_cert = make_leaf(rogue_ca_key, rogue_ca_cert, client_cn, server=False)

    files = TLSFiles(dir=d, ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server-key.pem",
                     client_cert=d / "client.pem", client_key=d / "client-key.pem",
                     rogue_ca=d / "rogue-ca.pem", rogue_cert=d / "rogue.pem", rogue_key=d / "rogue-key.pem")
    write_cert(files.ca, ca_cert)
    write_cert(files.server_cert, srv_cert)
    write_key(files.server_key, srv_key)
    write_cert(files.client_cert, cli_cert)
    write_key(files.client_key, cli_key)
    write_cert(files.rogue_ca, rogue_ca_cert)
    write_cert(files.rogue_cert, rogue_cert)
    write_key(files.rogue_key, rogue_key)
    return files


# --------------------------------------------------------------------------------------------
# One member
# --------------------------------------------------------------------------------------------

class EtcdServer:
    """One etcd member on 127.0.0.1.

    The data directory and ports are kept across ``stop``/``kill`` and
    ``start``, so a restart is a restart of the same member with its data.
    ``tls`` switches the client URL to https with client-cert auth required.
    ``netns`` runs it inside that network namespace, listening on ``host``
    (an address of the namespace), for clients in other namespaces; the
    health check and ``ctl`` then run there too.
    """

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None, name: str = "default",
                 tls: TLSFiles | None = None, client_port: int | None = None, peer_port: int | None = None,
                 initial_cluster: str | None = None, cluster_token: str | None = None,
                 extra_args: Sequence[str] = (), netns: str | None = None, host: str = LOOPBACK) -> None:
        if not etcd_available():
            raise FileNotFoundError(f"{ETCD_BIN} is not installed")
        self._own_dir = data_dir is None
        self._root = Path(tempfile.mkdtemp(prefix="etcd-test-")) if data_dir is None else Path(data_dir)
        self.data_dir = self._root / "data"
        self.log_path = self._root / f"{name}.log"
        self.name = name
        self.tls = tls
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self._fixed_ports = client_port is not None or initial_cluster is not None
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token or f"test-{os.getpid()}-{id(self):x}"
        self.extra_args = list(extra_args)
        self.netns, self.host = netns, host
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self._ever_healthy = False

    # -- addresses ----------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def _in_netns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle ----------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
            # Small and quick: tests never need the defaults' headroom.
            "--snapshot-count", "10000",
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        if self.tls:
            argv += ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                     "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        return self._in_netns(argv + self.extra_args)

    def spawn(self) -> None:
        """Start the process without waiting for health (clusters start members together)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"etcd {self.name} already running (pid {self.proc.pid})")
        self._root.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        # A clean environment: an ETCD_* variable from the host must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = subprocess.Popen(self._argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)

    def start(self, timeout: float = 15.0) -> "EtcdServer":
        for attempt in range(3):
            self.spawn()
            try:
                self.wait_healthy(timeout)
                return self
            except RuntimeError:
                exited = self.proc is not None and self.proc.poll() is not None
                self.kill()
                # Lost the free-port race on a member that never ran: new ports, empty dir, again.
                if exited and not self._fixed_ports and not self._ever_healthy and attempt < 2:
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                    self.client_port, self.peer_port = free_port(), free_port()
                    continue
                raise
        raise AssertionError("unreachable")

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited early: {self.log_tail()}")
            ok, last = self.health()
            if ok:
                self._ever_healthy = True
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout}s ({last}): {self.log_tail()}")

    def health(self) -> tuple[bool, str]:
        """GET /health on the client URL (with the client cert under TLS)."""
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca))
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))

        def get() -> str:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=0.5, context=ctx) as r:
                return r.read().decode()

        try:
            if self.netns:
                from reconciler.kernel.netlink.common import in_netns, netns_path

                body = in_netns(netns_path(self.netns), get)     # the socket is opened in there
            else:
                body = get()
            return json.loads(body).get("health") == "true", body
        except (OSError, ValueError, urllib.error.URLError) as exc:
            return False, str(exc)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # a paused process can't act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap()

    def restart(self, *, hard: bool = True, timeout: float = 15.0) -> None:
        (self.kill if hard else self.stop)()
        self.spawn()
        self.wait_healthy(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets open and answers nothing.
        Returns once the kernel reports it stopped: the signal is asynchronous,
        and a busy etcd goes on answering for a moment after ``kill()``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self._wait_state(lambda state: state in "Tt", "stopped")

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self._wait_state(lambda state: state not in "Tt", "running")

    def _wait_state(self, ok, what: str, timeout: float = 5.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        task_dir = f"/proc/{self.proc.pid}/task"
        while time.monotonic() < deadline:
            states = []
            for tid in os.listdir(task_dir):   # every thread: a group stop is per thread
                try:
                    with open(f"{task_dir}/{tid}/stat") as f:
                        # "pid (comm) state ...": comm may hold spaces, so split after the last ")".
                        states.append(f.read().rpartition(")")[2].split()[0])
                except FileNotFoundError:
                    continue  # the thread exited meanwhile
            if states and all(ok(state) for state in states):
                return
            time.sleep(0.005)
        raise RuntimeError(f"etcd {self.name} (pid {self.proc.pid}) not {what} after {timeout}s")

    def _reap(self) -> None:
        self.proc = None if self.proc is None or self.proc.poll() is not None else self.proc
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> "EtcdServer":
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- etcdctl ------------------------------------------------------------------------------

    def ctl(self, *args: str, user: str | None = None, check: bool = True,
            timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (v3 API) against this member."""
        argv = [ETCDCTL_BIN, f"--endpoints={self.endpoint}", "--command-timeout=5s"]
        if self.tls:
            argv += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        if user:
            argv += [f"--user={user}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env["ETCDCTL_API"] = "3"
        res = subprocess.run(self._in_netns(argv + list(args)), capture_output=True, text=True, env=env,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
        return res


# --------------------------------------------------------------------------------------------
# Three members
# --------------------------------------------------------------------------------------------

class EtcdCluster:
    """``size`` members on loopback, started together (each waits for quorum)."""

    def __init__(self, size: int = 3) -> None:
        if not etcd_available():
            raise FileNotFoundError(f"{ETCD_BIN} is not installed")
        self._root = Path(tempfile.mkdtemp(prefix="etcd-cluster-"))
        ports = [(free_port(), free_port()) for _ in range(size)]
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://{LOOPBACK}:{pp}" for n, (_, pp) in zip(names, ports))
        token = f"cluster-{os.getpid()}-{id(self):x}"
        self.members = [EtcdServer(data_dir=self._root / n, name=n, client_port=cp, peer_port=pp,
                                   initial_cluster=initial, cluster_token=token)
                        for n, (cp, pp) in zip(names, ports)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def member_for(self, endpoint: str) -> EtcdServer:
        """The member whose client URL contains ``endpoint`` (``host:port`` or full URL)."""
        for m in self.members:
            if endpoint in m.endpoint:
                return m
        raise KeyError(endpoint)

    def leader(self) -> EtcdServer:
        """The current raft leader, asked of the first running member."""
        for m in self.members:
            if m.proc is None:
                continue
            res = m.ctl("endpoint", "status", "--cluster", "-w", "json", check=False)
            if res.returncode != 0:
                continue
            for row in json.loads(res.stdout):
                status = row["Status"]
                if status["header"]["member_id"] == status["leader"]:
                    return self.member_for(row["Endpoint"])
        raise RuntimeError("no member reports itself the leader")

    def start(self, timeout: float = 20.0) -> "EtcdCluster":
        try:
            for m in self.members:
                m.spawn()
            for m in self.members:
                m.wait_healthy(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Auth
# --------------------------------------------------------------------------------------------

def enable_auth(server: EtcdServer, *, root_password: str = "rootpw", user: str | None = "flannel",
                password: str = "flannelpw", prefix: str = "/coreos.com/network") -> dict[str, str]:
    """Create ``root`` (required before ``auth enable``) and, if ``user`` is given,
    a least-privilege user with readwrite on ``prefix/`` only.  Returns the
    credentials."""
    server.ctl("user", "add", f"root:{root_password}")
    creds = {"root_user": "root", "root_password": root_password}
    if user:
        server.ctl("role", "add", user)
        server.ctl("role", "grant-permission", user, "--prefix=true", "readwrite", prefix.rstrip("/") + "/")
        server.ctl("user", "add", f"{user}:{password}")
        server.ctl("user", "grant-role", user, user)
        creds.update(user=user, password=password)
    server.ctl("auth", "enable")
    return creds
