"""One agent per network namespace and per subnet file; no ``apply`` beside an agent; no pile of lock files."""
from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from reconciler.agent import instance_lock
from reconciler.agent.instance_lock import LOCK_DIR, acquire_instance_lock, acquire_namespace_lock
from reconciler.core.errors import ReconcilerError
from reconciler.kernel.netlink.common import netns_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "reconciler", "examples", "cluster-3-nodes.json")
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _require_root() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("needs root for /run/flannel-reconciler, namespaces and mounts (runs in CI as root)")


def test_a_second_holder_is_refused_with_the_first_named(tmp_path):
    subnet_file = str(tmp_path / "subnet.env")
    with acquire_instance_lock(None, subnet_file, lock_dir=str(tmp_path / "locks")):
        # Another process (flock locks are per open file, so a second process is the real test).
        code = ("import sys; from reconciler.agent.instance_lock import acquire_instance_lock as a\n"
                "try:\n    a(None, sys.argv[1], lock_dir=sys.argv[2])\n"
                "except Exception as e:\n    print(e); sys.exit(1)\n")
        out = subprocess.run([sys.executable, "-c", code, subnet_file, str(tmp_path / "locks")],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        assert out.returncode == 1
        assert f"pid {os.getpid()}" in out.stdout and "the host network namespace" in out.stdout
    # Released: taken again at once.
    acquire_instance_lock(None, subnet_file, lock_dir=str(tmp_path / "locks")).release()


def test_the_subnet_file_is_locked_on_its_own(tmp_path):
    subnet_file = str(tmp_path / "subnet.env")
    held = acquire_instance_lock(None, subnet_file, lock_dir=str(tmp_path / "a"))
    try:
        code = ("import sys; from reconciler.agent.instance_lock import acquire_instance_lock as a\n"
                "try:\n    a(None, sys.argv[1], lock_dir=sys.argv[2])\n"
                "except Exception as e:\n    print(e); sys.exit(1)\n")
        out = subprocess.run([sys.executable, "-c", code, subnet_file, str(tmp_path / "b")],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        assert out.returncode == 1 and f"the subnet file {subnet_file}" in out.stdout
    finally:
        held.release()


def test_an_unusable_lock_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ReconcilerError):
        acquire_instance_lock(None, str(tmp_path / "subnet.env"), lock_dir=str(blocker / "locks"))


@pytest.mark.root
def test_run_refuses_to_start_next_to_a_running_agent(tmp_path):
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("needs root for /run/flannel-reconciler (runs in CI as root)")
    subnet_file = str(tmp_path / "subnet.env")
    with acquire_instance_lock(None, subnet_file):
        out = subprocess.run([sys.executable, "-m", "reconciler", "run", "--subnet-file", subnet_file,
                              "--etcd-endpoints", "http://127.0.0.1:9"], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: another flannel-reconciler (pid ")
    assert "Traceback" not in out.stderr


def test_an_unwritable_subnet_directory_skips_that_lock_only(tmp_path):
    """The agent retries an unwritable subnet.env: the lock must not make it fatal."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    lock = acquire_instance_lock(None, str(blocker / "sub" / "subnet.env"), lock_dir=str(tmp_path / "locks"))
    try:
        assert len(lock.skipped) == 1 and "subnet.env.lock" in lock.skipped[0]
        # The cause names the file that failed: here the directory that could not be made.
        assert f"{blocker}/sub: " in lock.skipped[0]
    finally:
        lock.release()


# ---------------------------------------------------------------- lock files do not pile up

def _lock_files(lock_dir) -> list[str]:
    return sorted(n for n in os.listdir(lock_dir) if n.endswith(".lock"))


def test_the_namespace_lock_file_goes_with_its_holder(tmp_path):
    locks = tmp_path / "locks"
    lock = acquire_instance_lock(None, str(tmp_path / "subnet.env"), lock_dir=str(locks))
    assert len(_lock_files(locks)) == 1
    lock.release()
    assert _lock_files(locks) == []


def test_files_left_by_killed_agents_are_swept_and_a_held_one_is_kept(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    # Left behind by an agent that was SIGKILLed (no one holds it), and one a live agent holds.
    (locks / "netns-4026530000.lock").write_text("123\n")
    held = locks / "netns-4026539999.lock"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held.write_text("")
    try:
        assert holder.stdout.readline().strip() == "held"
        with acquire_namespace_lock(None, lock_dir=str(locks)):
            own = f"netns-{os.stat('/proc/self/ns/net').st_ino}.lock"
            assert _lock_files(locks) == sorted([own, held.name])
        assert _lock_files(locks) == [held.name]
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_a_file_unlinked_as_it_was_opened_is_not_taken(tmp_path, monkeypatch):
    """Its holder unlinks the file and lets go between our open and our flock: the lock we
    would get is on a file no one else can find, so the taker must lock the new one."""
    path = str(tmp_path / "netns-1.lock")
    real_open = instance_lock._open
    calls = []

    def racing_open(p):
        fd = real_open(p)
        if not calls:
            os.unlink(p)          # the previous holder's release, in the window
        calls.append(p)
        return fd

    monkeypatch.setattr(instance_lock, "_open", racing_open)
    fd = instance_lock._lock(path)
    try:
        assert len(calls) == 2
        assert os.fstat(fd).st_ino == os.stat(path).st_ino
        # And it really is the lock: a second opener of the path is refused.
        other = os.open(path, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- apply beside an agent

@pytest.mark.root
def test_apply_is_refused_in_a_namespace_an_agent_manages(netns):
    """apply would delete what the agent wrote; plan and show, which only read, still work."""
    args = ["--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--iface", "lo", "--netns", netns]

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "reconciler", *argv, *args], capture_output=True,
                              text=True, cwd=ROOT, env=ENV, timeout=120)

    with acquire_instance_lock(netns_path(netns), "/nonexistent/dir/subnet.env"):
        out = cli("apply")
        assert out.returncode == 1, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith(f"error: another flannel-reconciler (pid {os.getpid()}) already manages "
                                   f"network namespace {netns}"), lines
        assert subprocess.run(["ip", "-n", netns, "link", "show", "flannel.1"], capture_output=True).returncode != 0
        assert cli("plan").returncode == 2
        assert cli("show").returncode == 2
    out = cli("apply")
    assert out.returncode == 0, out.stderr
    assert subprocess.run(["ip", "-n", netns, "link", "show", "flannel.1"], capture_output=True).returncode == 0
    ino = os.stat(netns_path(netns)).st_ino
    assert not os.path.exists(os.path.join(LOCK_DIR, f"netns-{ino}.lock"))   # apply's lock went with it


# ---------------------------------------------------------------- a full file system

@pytest.mark.root
def test_a_full_tmpfs_under_the_subnet_file_does_not_stop_the_agent(tmp_path):
    """/run is a small tmpfs on many hosts: the optional subnet.env.lock cannot take the pid
    there; the agent must start anyway (it retries subnet.env while running) and say which file."""
    _require_root()
    mnt = tmp_path / "full"
    mnt.mkdir()
    subnet_file = mnt / "subnet.env"
    # A private mount and network namespace: the tmpfs is seen by this agent only, and its
    # namespace lock is its own namespace's.  etcd on port 9 of the fresh namespace: unreachable.
    script = (f"ip link set lo up && mount -t tmpfs -o size=8k tmpfs {mnt} && "
              f"(dd if=/dev/zero of={mnt}/fill bs=4k count=8 2>/dev/null; true) && "
              f"exec {sys.executable} -m reconciler run --subnet-file {subnet_file} "
              f"--etcd-endpoints http://127.0.0.1:9 --iface lo --public-ip 198.18.0.1")
    proc = subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", script], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=ENV)
    lines: list[str] = []
    try:
        # Until the agent is past start-up (it reports etcd), or it exits.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line.rstrip())
                if "etcd unreachable" in line or "no network config" in line:
                    break
        assert proc.poll() is None, "\n".join(lines)
        assert any(f"{subnet_file}.lock" in x and "No space left on device" in x for x in lines), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
