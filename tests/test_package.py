"""The package's shape: a flat public surface, and a core that imports no shell."""
import subprocess
import sys
import types

import reconciler


def test_all_is_exactly_the_sorted_public_names():
    public = sorted(n for n, v in vars(reconciler).items()
                    if not n.startswith("_") and not isinstance(v, types.ModuleType))
    assert reconciler.__all__ == public


def test_the_core_imports_no_shell():
    """pyroute2, grpc and the etcd client blocked: the pure core still imports and plans."""
    code = (
        "import sys\n"
        "for m in ('pyroute2', 'grpc', 'pyetcd'): sys.modules[m] = None\n"
        "import reconciler\n"
        "from reconciler.core import render\n"
        "from reconciler.kernel import apply\n"
        "from reconciler.core.model import KernelState\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr
