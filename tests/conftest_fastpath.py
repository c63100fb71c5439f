"""The compiled fast path as a test prerequisite, and the pure/compiled fixture.

Like root and etcd: a test that needs ``_fastpath`` skips when it is not
built, except in CI (``CI`` set), whose set-up builds it, where it fails.
"""
from __future__ import annotations

import os

import pytest

import _fastpath


def require_fastpath() -> None:
    if not _fastpath.AVAILABLE:
        if os.environ.get("CI"):
            pytest.fail("the _fastpath extension is not built (CI must build it: pip install -e . in .ci/setup)")
        pytest.skip("the _fastpath extension is not built (python setup.py build_ext --inplace)")


@pytest.fixture(params=[False, True], ids=["pure", "accelerated"])
def accelerate(request) -> bool:
    """Run the test with the pure-Python codec and again with the compiled one."""
    if request.param:
        require_fastpath()
    return request.param
