"""The console scripts' and ``python -m reconciler``'s entry points.

``--version`` (flanneld's ``-version`` too) is answered here, before
``reconciler.cli.main`` is imported: it needs neither the core, the rules nor
netlink, and loading them was most of its time.  Anything else (a bad flag
included) goes to ``cli.main``, which says what is wrong in one line.

Run as a program (no ``argv`` given), a one-shot command (``plan``, ``apply``,
``show``, ...) leaves with ``os._exit`` once its output is flushed: Python's own
teardown would free, one by one, the 100,000 objects a 5,000-lease plan builds
and walk them with the collector, 20-40 ms after the work is done that give back
nothing the end of the process does not (docs/memory.md).  Nothing is left to
run at exit: files are closed, the namespace lock is the kernel's to drop.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

__all__ = ["flanneld_main", "main"]


def _version_only(argv: list[str], flanneld: bool) -> bool:
    from reconciler.cli.flags import parser_argv
    from reconciler.core.errors import ReconcilerError

    try:
        return parser_argv(argv, flanneld=flanneld) == ["--version"]
    except ReconcilerError:
        return False        # cli.main says what is wrong with the line


def _run(argv: Sequence[str] | None, flanneld: bool) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if _version_only(args, flanneld):
        from reconciler.version import version_text

        print(version_text())
        return 0
    from reconciler.cli import main as cli

    code = cli.main(args, flanneld=flanneld)
    if argv is None and cli.one_shot:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """Exit now, without the interpreter's teardown; only once everything written is out."""
    import logging

    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return          # a closed or broken stream: the ordinary exit reports it
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """``flannel-reconciler`` and ``python -m reconciler``."""
    return _run(argv, flanneld=False)


def flanneld_main(argv: Sequence[str] | None = None) -> int:
    """``flanneld``: a flanneld command line as it is, no subcommand (it means ``run``)."""
    return _run(argv, flanneld=True)
