"""Shared fixtures.  Root/etcd fixtures live in the plugin modules below; they
skip only when not root (or etcd is missing) *and* ``CI`` is unset: in CI,
which runs as root with everything installed, they must run."""
import os

import pytest

pytest_plugins = ["tests.conftest_netns", "tests.conftest_etcd", "tests.conftest_fastpath"]


@pytest.fixture
def kernel():
    from tests.model_kernel import ModelKernel

    return ModelKernel()


#: Fixtures that need root and network namespaces, or a real etcd server.  A test that uses one
#: (directly or through another fixture) gets the marker: ``-m "not root"`` and ``-m etcd``
#: select by what a test really needs, and the marker can never be forgotten.
ROOT_FIXTURES = frozenset({"netns", "underlay_factory"})
ETCD_FIXTURES = frozenset({"etcd_server", "etcd_shared", "etcd_store", "etcd_cluster", "etcd_tls", "etcd_auth"})


def marks_for(fixturenames) -> set[str]:
    names = set(fixturenames)
    return ({"root"} if names & ROOT_FIXTURES else set()) | ({"etcd"} if names & ETCD_FIXTURES else set())


def pytest_collection_modifyitems(config, items):
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for mark in sorted(marks_for(getattr(item, "fixturenames", ())) - have):
            item.add_marker(mark)


def pytest_report_header(config):
    return f"root: {os.geteuid() == 0}, CI: {os.environ.get('CI', '')!r}"


# CI runs the properties on a fixed sequence of examples, so a green run stays
# green; locally every run explores new ones.  `--hypothesis-seed` still works.
from hypothesis import settings as _settings  # noqa: E402

_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _settings.load_profile("ci")
