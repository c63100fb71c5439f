"""pytest fixtures for real etcd servers (register with
``pytest_plugins = ["tests.conftest_etcd"]`` in tests/conftest.py).

Without ``/usr/bin/etcd`` the tests using these fixtures are skipped -- unless
the ``CI`` environment variable is set: in CI a missing etcd is a failure.

* ``etcd_server``: a fresh single member for one test (0.5 s to start); free
  to stop, kill, pause and restart.
* ``etcd_shared`` + ``etcd_prefix``: one member for the whole session and a
  unique key prefix per test, for tests that only read and write keys.
* ``etcd_store``: an ``EtcdStore`` on ``etcd_shared`` under ``etcd_prefix``.
* ``etcd_cluster``: three members on loopback.
* ``etcd_tls``: a member with https and client-certificate auth, and its PEM files.
* ``etcd_auth``: a member with auth enabled; root and a prefix-scoped user.
"""
from __future__ import annotations

import itertools
import os
from typing import Iterator

import pytest

from tests.etcd_server import ETCD_BIN, EtcdCluster, EtcdServer, TLSFiles, enable_auth, etcd_available, make_tls_files


def require_etcd() -> None:
    """Skip (or, in CI, fail) when the etcd binary is missing."""
    if etcd_available():
        return
    reason = f"etcd server binary {ETCD_BIN} not installed (apt-get install etcd-server)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: required in CI", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    require_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_shared() -> Iterator[EtcdServer]:
    require_etcd()
    with EtcdServer() as server:
        yield server


_prefix_counter = itertools.count()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """``/test/<n>-<test name>/coreos.com/network``: unique per test."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"/test/{next(_prefix_counter)}-{name}/coreos.com/network"


@pytest.fixture
def etcd_store(etcd_shared: EtcdServer, etcd_prefix: str):
    from reconciler.etcd.store import EtcdStore

    with EtcdStore([etcd_shared.endpoint], prefix=etcd_prefix, timeout=3.0) as store:
        yield store


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    require_etcd()
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def etcd_tls(tmp_path) -> Iterator[tuple[EtcdServer, TLSFiles]]:
    require_etcd()
    files = make_tls_files(tmp_path / "pki")
    with EtcdServer(tls=files) as server:
        yield server, files


@pytest.fixture
def etcd_auth() -> Iterator[tuple[EtcdServer, dict[str, str]]]:
    """A member with auth on.  Credentials: ``root``/``root_password`` and
    ``user``/``password`` (readwrite on ``/coreos.com/network/`` only)."""
    require_etcd()
    with EtcdServer() as server:
        creds = enable_auth(server)
        yield server, creds
