"""The compiled fast path as a test prerequisite, the pure/compiled fixture, and the
field-by-field form the two paths' values are compared in.

Like root and etcd: a test that needs ``_fastpath`` skips when it is not
built, except in CI (``CI`` set), whose set-up builds it, where it fails.
"""
from __future__ import annotations

import dataclasses
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


def every_field(values):
    """Each value of a list as its class and all its fields, each with its type: ``==`` leaves
    out the fields not compared (a route's protocol) and takes 1 for True, and the compiled
    fast path sets every slot itself.  Anything but a list, or an item that is no dataclass
    (None), is given back as it is."""
    if not isinstance(values, list):
        return values
    return [(type(v), tuple((type(x), x) for x in (getattr(v, f.name) for f in dataclasses.fields(v))))
            if dataclasses.is_dataclass(v) else v for v in values]
