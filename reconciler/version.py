"""The package version, ``reconciler.__version__``: one number, kept in ``pyproject.toml``.

Read from the source tree's ``pyproject.toml`` when the package runs from a
checkout (an editable install or ``PYTHONPATH``), else from the installed
package metadata.  The checkout wins because an editable install's metadata
is written once, at ``pip install -e`` time, and goes stale when the version
is bumped later (docs/fastpath.md, "Version").
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DIST = "flannel-reconciler"
#: When neither a checkout nor installed metadata says (a copied tree, a zipapp).
UNKNOWN = "0+unknown"


@lru_cache(maxsize=1)
def version() -> str:
    """This package's version string, e.g. ``0.2.0``."""
    source = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if source.is_file():
        import tomllib

        try:
            project = tomllib.loads(source.read_text()).get("project", {})
        except (OSError, ValueError):
            project = {}
        if project.get("name") == DIST and isinstance(project.get("version"), str):
            return project["version"]
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DIST)
    except PackageNotFoundError:
        return UNKNOWN


def version_text() -> str:
    """``flannel-reconciler 0.2.0 (netlink: batched, Cython fast path)``: the version and the default
    netlink path, as ``--netlink-backend``/``FLANNELD_NETLINK_BACKEND`` and the build make it."""
    import os

    backend = os.environ.get("FLANNELD_NETLINK_BACKEND") or "batched"
    if backend == "batched":
        import _fastpath

        backend += ", Cython fast path" if _fastpath.AVAILABLE else ", pure Python"
    return f"flannel-reconciler {version()} (netlink: {backend})"
