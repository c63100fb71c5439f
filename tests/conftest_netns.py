"""pytest plugin: network-namespace fixtures for the root tests.

Load it with ``pytest_plugins = ["tests.conftest_netns"]`` in
``tests/conftest.py`` (or ``-p tests.conftest_netns``).

* ``netns``: a fresh namespace name (``lo`` up), deleted afterwards.
* ``underlay_factory``: ``underlay_factory(count=2, mtu=1500)`` builds a
  ``tests.netns.UnderlayNet`` (node namespaces on one bridged segment);
  everything it built is deleted at teardown.

Both skip only when the test runs without root *and* the ``CI`` variable is
unset: in CI, which runs as root, a missing privilege must fail, not hide.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Callable, Iterator

import pytest

from tests.netns import UnderlayNet, netns as _netns, underlay as _underlay


def require_root() -> None:
    """Skip unless root; but never skip in CI (``CI`` set), where root is expected."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("needs root to create network namespaces (not root, and CI is unset; "
                    "in CI these tests run as root and would fail instead)")


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    with _netns() as name:
        yield name


@pytest.fixture
def underlay_factory() -> Iterator[Callable[..., UnderlayNet]]:
    require_root()
    with ExitStack() as stack:
        yield lambda count=2, **kw: stack.enter_context(_underlay(count, **kw))
