"""``python -m reconciler``.

``--version`` is answered before ``reconciler.cli.main`` is imported: it
needs neither the core, the rules nor netlink, and loading them was most of
its time.  Anything else (a bad flag included) goes to ``main``, which says
what is wrong in one line.
"""
import sys


def _version_only(argv: list[str]) -> bool:
    from reconciler.cli.flags import parser_argv
    from reconciler.core.errors import ReconcilerError

    try:
        return parser_argv(argv) == ["--version"]
    except ReconcilerError:
        return False


if _version_only(sys.argv[1:]):
    from reconciler.version import version_text

    print(version_text())
    sys.exit(0)

from reconciler.cli.main import main  # noqa: E402 - after the --version answer, on purpose

sys.exit(main())
