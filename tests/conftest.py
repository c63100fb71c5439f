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


def pytest_report_header(config):
    return f"root: {os.geteuid() == 0}, CI: {os.environ.get('CI', '')!r}"


# CI runs the properties on a fixed sequence of examples, so a green run stays
# green; locally every run explores new ones.  `--hypothesis-seed` still works.
from hypothesis import settings as _settings  # noqa: E402

_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _settings.load_profile("ci")
