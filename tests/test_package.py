"""The package's shape: a flat public surface, a core that imports no shell, and the import
contract between the layers (no layer imports one it must not, and no import cycle)."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import types

import pytest

import reconciler


def test_all_is_exactly_the_sorted_public_names():
    # The names load on first use: each one resolves, and then they are exactly __all__.
    for name in reconciler.__all__:
        getattr(reconciler, name)
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


# --------------------------------------------------------------------------------------------
# The import contract: layers apart, and no cycle, function-level imports included
# --------------------------------------------------------------------------------------------

ROOT = pathlib.Path(reconciler.__file__).resolve().parent

#: layer -> the layers it must never import (README "Design"; docs/design.md has the map).
FORBIDDEN = {
    "core": {"incremental", "agent", "etcd", "kernel", "rules", "cli", "tools"},
    "incremental": {"agent", "etcd", "kernel", "cli", "tools"},
    "agent": {"cli", "tools"},
    "etcd": {"incremental", "agent", "kernel", "rules", "cli", "tools"},
    "kernel": {"incremental", "agent", "etcd", "rules", "cli", "tools"},
    "rules": {"incremental", "agent", "etcd", "kernel", "cli", "tools"},
}


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text (module level, inside a
    function, under ``if TYPE_CHECKING``): every ``import`` statement counts."""
    modules: dict[str, pathlib.Path] = {}
    for path in root.rglob("*.py"):
        parts = (package,) + path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_cycle_anywhere_function_level_imports_included():
    assert cycles(import_graph(ROOT, "reconciler")) == []


def test_no_layer_imports_a_layer_it_must_not():
    graph = import_graph(ROOT, "reconciler")
    wrong = sorted((m, t) for m, targets in graph.items() for t in targets
                   if _layer(t) in FORBIDDEN.get(_layer(m), ()))
    assert wrong == []


def test_the_contract_sees_a_cycle_made_by_a_function_level_import(tmp_path):
    """The checks above are only as good as the graph: a cycle closed inside a function, through a
    relative import, is found; so is a core module reaching into the kernel."""
    pkg = tmp_path / "pkg"
    (pkg / "core").mkdir(parents=True)
    (pkg / "kernel").mkdir()
    for d in (pkg, pkg / "core", pkg / "kernel"):
        (d / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from pkg.core import b\n")
    (pkg / "core" / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "core" / "c.py").write_text("def g():\n    from ..kernel import wire\n")
    (pkg / "kernel" / "wire.py").write_text("import os\n")
    graph = import_graph(pkg, "pkg")
    assert cycles(graph) == [["pkg.core.a", "pkg.core.b"]]
    assert graph["pkg.core.c"] == {"pkg.kernel.wire"}


def test_tests_are_marked_by_the_fixtures_they_use(request):
    """The conftest hook marks every collected test from its fixture closure: a test that reaches
    a namespace or an etcd fixture, even through another fixture, carries ``root`` or ``etcd``."""
    from tests.conftest import ETCD_FIXTURES, ROOT_FIXTURES, marks_for

    assert marks_for(["tmp_path", "etcd_store"]) == {"etcd"}
    assert marks_for(["netns", "etcd_shared"]) == {"root", "etcd"}
    assert marks_for(["kernel"]) == set()
    checked = 0
    for item in request.session.items:
        names = set(getattr(item, "fixturenames", ()))
        marks = {m.name for m in item.iter_markers()}
        if names & ROOT_FIXTURES:
            assert "root" in marks, item.nodeid
            checked += 1
        if names & ETCD_FIXTURES:
            assert "etcd" in marks, item.nodeid
            checked += 1
    if len(request.session.items) > 1:
        assert checked, "no collected test uses a root or etcd fixture: run with the whole suite to check the hook"


# --------------------------------------------------------------------------------------------
# What a command imports: --version answers without the commands' modules
# --------------------------------------------------------------------------------------------

def _imported(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m reconciler argv``; its result and every module it imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "reconciler", *argv],
                         capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    names = {line.rpartition("|")[2].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return out, names


#: Nothing ``--version`` needs: the commands, the lease and plan pipeline, the rules, etcd, gRPC.
NOT_FOR_VERSION = {"argparse", "grpc", "pyroute2", "prometheus_client", "reconciler.cli.main",
                   "reconciler.cli.inputs", "reconciler.core.leases", "reconciler.core.desired",
                   "reconciler.core.reconcile", "reconciler.rules", "reconciler.etcd", "reconciler.agent"}


@pytest.mark.parametrize("argv", [["--version"], ["-version"], ["plan", "--version"], ["run", "-version=true"]])
def test_version_imports_neither_the_commands_nor_the_core(argv):
    from reconciler.version import version_text

    out, names = _imported(*argv)
    assert (out.returncode, out.stdout) == (0, version_text() + "\n"), out.stderr[-2000:]
    assert "reconciler.cli.flags" in names          # the list is read, not empty
    assert not names & NOT_FOR_VERSION


@pytest.mark.parametrize("entry, argv", [("main", ["--version"]), ("flanneld_main", ["-version"]),
                                         ("flanneld_main", ["-etcd-endpoints=http://198.18.0.5:2379", "-version"])])
def test_the_console_scripts_answer_version_the_same_light_way(entry, argv):
    """The installed ``flannel-reconciler`` and ``flanneld`` scripts call ``cli.entry``, as ``-m`` does."""
    from reconciler.version import version_text

    code = (f"import sys\nfrom reconciler.cli.entry import {entry}\nrc = {entry}({argv!r})\n"
            f"print(rc, sorted(m for m in {sorted(NOT_FOR_VERSION)!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout == version_text() + "\n0 []\n"
    text = (ROOT.parent / "pyproject.toml").read_text()
    assert f"reconciler.cli.entry:{entry}" in text


def test_a_bad_flag_beside_version_is_still_the_one_line_error():
    out, names = _imported("--etcd-prefix", "plan", "--version")
    assert out.returncode == 1 and out.stdout == ""
    assert [line for line in out.stderr.splitlines() if not line.startswith("import time:")] == [
        "error: options go after the command: flannel-reconciler plan --etcd-prefix --version"]


def test_the_package_loads_its_public_names_on_first_use():
    code = ("import sys, reconciler\n"
            "before = 'reconciler.core.plan' in sys.modules\n"
            "from reconciler import make_plan, KernelState\n"
            "print(before, make_plan is sys.modules['reconciler.core.plan'].make_plan, KernelState.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "False True KernelState\n"), out.stderr


def test_an_offline_plan_imports_no_tool_backend_nor_the_shell(tmp_path):
    """``plan --offline`` plans the rules against none: the iptables/nft modules, etcd, gRPC,
    pyroute2 and the agent are not imported."""
    from reconciler.core.leases import LeaseSnapshot, RawKV, encode_lease_value, snapshot_to_json

    config = '{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan"}}'
    kvs = (RawKV("/coreos.com/network/config", config),
           RawKV("/coreos.com/network/subnets/100.64.1.0-24",
                 encode_lease_value("198.18.0.1", "0a:58:64:40:01:00", 1), 7, 2))
    snap = tmp_path / "leases.json"
    snap.write_text(snapshot_to_json(LeaseSnapshot("/coreos.com/network", 3, kvs)))
    out, names = _imported("plan", "--offline", "--leases-file", str(snap), "--public-ip", "198.18.0.1")
    assert out.returncode == 2 and "to create" in out.stdout, out.stderr[-2000:]
    assert "reconciler.rules.commands" in names
    assert not names & {"reconciler.rules.iptables", "reconciler.rules.nftables", "reconciler.rules.reconciler",
                        "reconciler.etcd", "reconciler.agent", "grpc", "pyroute2", "prometheus_client"}


def test_a_one_shot_command_run_as_a_program_leaves_without_the_teardown(tmp_path):
    """``plan`` (a one-shot command) run as ``python -m reconciler``: its whole output and exit
    status, and no interpreter teardown after it (an ``atexit`` hook never runs).  Called with an
    argv (the tests, a caller in-process), ``entry.main`` returns as before."""
    from reconciler.core.leases import LeaseSnapshot, RawKV, encode_lease_value, snapshot_to_json

    config = '{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan"}}'
    kvs = [RawKV("/coreos.com/network/config", config)]
    kvs += [RawKV(f"/coreos.com/network/subnets/100.64.{i}.0-24",
                  encode_lease_value(f"198.18.0.{i}", f"0a:58:64:40:{i:02x}:00", 1), 7, i + 1) for i in range(1, 200)]
    snap = tmp_path / "leases.json"
    snap.write_text(snapshot_to_json(LeaseSnapshot("/coreos.com/network", 300, tuple(kvs))))
    argv = ["plan", "--offline", "--leases-file", str(snap), "--public-ip", "198.18.0.1", "--show-all"]
    hook = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: sys.stderr.write('teardown ran\\n'))\n"
            f"sys.argv = ['reconciler', *{argv!r}]\n"
            "runpy.run_module('reconciler', run_name='__main__', alter_sys=True)\n")
    out = subprocess.run([sys.executable, "-c", hook], capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "teardown ran" not in out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.strip().startswith("+ route 100.64.") for line in lines) == 198, out.stdout[-500:]
    assert lines[-1] == "Plan: 602 to create, 0 to update, 0 to delete."
    # The same in-process, through ``entry.main(argv)``: it returns the status.
    code = ("import sys\nfrom reconciler.cli.entry import main\n"
            f"rc = main({argv!r})\nsys.stderr.write(f'returned {{rc}}\\n')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert out.returncode == 0 and "returned 2" in out.stderr, out.stderr[-2000:]
    # A one-shot command's error: still the one line and status 1.
    hook = hook.replace(str(snap), str(tmp_path / "missing.json"))
    out = subprocess.run([sys.executable, "-c", hook], capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert out.returncode == 1 and out.stderr.splitlines()[0].startswith("error: --leases-file "), out.stderr
