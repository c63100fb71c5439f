"""One agent per network namespace and per subnet file."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reconciler.core.errors import ReconcilerError
from reconciler.agent.instance_lock import acquire_instance_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    finally:
        lock.release()
