"""``python -m reconciler bench``: what an operator feels, at cluster scale.

For each cluster size it builds a simulated cluster (a private etcd with N-1
flanneld-written leases, one node namespace), runs the real agent (``run``)
in it and drives the scenarios of ``scenarios.py``, with baselines measured
in the same run (iproute2, pyroute2, a re-enactment of flanneld's event
handling).  Results: a table on stdout, progress on stderr, a JSON file and
three PNG plots in ``--out``.  Everything it made is removed at the end, also
after a failure, Ctrl-C or SIGTERM.

Modules, one concern each: ``cluster`` (layout, etcd leases, namespaces),
``monitor`` (rtnetlink notifications), ``probe`` (/proc and /metrics of the
agent), ``baselines``, ``flanneld`` (the re-enactment, its own process),
``scenarios``, ``report`` (figures, table, JSON, plots).  The agent never
imports this package.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence, TextIO

__all__ = ["machine_facts", "parse_nodes", "run_bench"]

MIN_NODES, MAX_NODES = 100, 60_000
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent.parent


def parse_nodes(text: str) -> list[int]:
    """``"1000,5000"`` -> [1000, 5000]; raises ValueError with a message for the user."""
    out = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise ValueError(f"--nodes: {part!r} is not a number") from None
        if not MIN_NODES <= n <= MAX_NODES:
            raise ValueError(f"--nodes: {n} is outside {MIN_NODES}..{MAX_NODES}")
        out.append(n)
    if not out:
        raise ValueError("--nodes: give at least one cluster size")
    return sorted(set(out))


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:")) // 1024
    except (OSError, StopIteration):
        mem = None
    commit = _cmd("git", "-C", str(_PACKAGE_ROOT), "rev-parse", "HEAD")
    dirty = bool(_cmd("git", "-C", str(_PACKAGE_ROOT), "status", "--porcelain", "--untracked-files=no"))
    try:
        import pyroute2
        pyroute2_version = pyroute2.__version__
    except Exception:  # noqa: BLE001 - a fact, not a requirement
        pyroute2_version = None
    try:
        import _fastpath
        fast = bool(_fastpath.AVAILABLE)
    except ImportError:
        fast = False
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or "unknown", "dirty": dirty,
        "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "mem_mib": mem,
        "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "pyroute2": pyroute2_version, "fastpath": fast, "iproute2": _cmd("ip", "-V"),
        "etcd": _cmd("/usr/bin/etcd", "--version").splitlines()[0] if os.path.exists("/usr/bin/etcd") else "",
    }


def compile_bytecode() -> bool:
    """Write the package's bytecode (``__pycache__``) before anything is timed.

    An installed package has it: pip compiles a wheel's modules at install time, and the
    image and the systemd unit install wheels.  A checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set (as this workplace does) would otherwise compile
    every module at every start, about 0.1 s of the agent's and ``apply``'s start-up
    that no node pays.  Returns whether it worked (a read-only checkout: then every
    start pays it, and the JSON says so)."""
    import compileall

    ok = True
    for sub in ("reconciler", "_fastpath"):
        path = _PACKAGE_ROOT / sub
        if path.is_dir():
            ok = bool(compileall.compile_dir(str(path), quiet=2, workers=1)) and ok
    return ok


def problems() -> list[str]:
    from reconciler.tools.lab import etcd as lab_etcd

    out = []
    if os.geteuid() != 0:
        out.append("bench must run as root: it creates network namespaces and VXLAN devices (try sudo)")
    if not os.access(lab_etcd.ETCD_BIN, os.X_OK):
        out.append(f"{lab_etcd.ETCD_BIN} not found (apt-get install etcd-server)")
    for tool in ("ip", "bridge"):
        if shutil.which(tool) is None:
            out.append(f"'{tool}' not found (apt-get install iproute2)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out.append("matplotlib is not installed (pip install 'flannel-reconciler[bench]')")
    return out


_OWNER_PID = os.getpid()


def _interrupt(signum, _frame):
    if os.getpid() != _OWNER_PID:
        # A forked helper (pyroute2 forks one to open a namespace socket and
        # stops it with SIGTERM) must die as by default, never run our cleanup.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def run_bench(nodes: Sequence[int], backend: str = "pyroute2", out_dir: str = "bench-results",
              quick: bool = False, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run every scenario for every size; 0 when all ran, 1 on an error, 130 on Ctrl-C."""
    from reconciler.tools.bench.report import render_table
    from reconciler.tools.bench.scenarios import ClusterRun, Options, Progress

    out, err = out or sys.stdout, err or sys.stderr
    bad = problems()
    if bad:
        for line in bad:
            print(f"error: bench prerequisite: {line}", file=err)
        return 1
    out_path = Path(out_dir)
    try:
        out_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --out {out_dir}: {exc.strerror}", file=err)
        return 1
    opts = Options(backend=backend, quick=quick)
    compiled = compile_bytecode()
    machine = machine_facts()
    machine["bytecode_compiled"] = compiled
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    runs: dict[int, dict] = {}
    rc = 1
    global _OWNER_PID
    _OWNER_PID = os.getpid()
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for n in nodes:
            workdir = Path(tempfile.mkdtemp(prefix=f"flannel-bench-{n}-"))
            try:
                with ExitStack() as stack:
                    run = ClusterRun(n, opts, workdir, stack, Progress(n, err))
                    try:
                        run.run()
                    finally:
                        # Ctrl-C must not cut the cleanup short.
                        signal.signal(signal.SIGINT, signal.SIG_IGN)
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, _interrupt)
                signal.signal(signal.SIGTERM, _interrupt)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            runs[n] = run.meta
            # Written after every size, so a long run interrupted later keeps what it measured.
            json_path, pngs = _write(out_path, stamp, machine, backend, quick, nodes, runs)
        for n, meta in runs.items():
            print(render_table(n, meta["figures"]), file=out)
        print(f"results: {json_path}; plots: {', '.join(str(p) for p in pngs)}", file=out)
        print(f"machine: {machine['cpus']} CPUs ({machine['cpu']}), load average "
              f"{' '.join(f'{x:.2f}' for x in machine['loadavg_start'])} at start, "
              f"{' '.join(f'{x:.2f}' for x in machine['loadavg_end'])} at the end", file=out)
        rc = 0
    except KeyboardInterrupt:
        print("\ninterrupted: everything the benchmark made has been removed", file=err)
        rc = 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, never a traceback
        print(f"error: bench failed: {exc}", file=err)
        rc = 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return rc


def _write(out_path: Path, stamp: str, machine: dict, backend: str, quick: bool, nodes, runs: dict[int, dict]):
    from reconciler.tools.bench.report import render_markdown, write_json, write_plots

    _cross_size(runs)
    machine["loadavg_end"] = os.getloadavg()
    title = (f"{machine['date'][:10]}, {machine['cpus']} CPUs, Linux {machine['kernel']}, "
             f"--netlink-backend {backend}{', quick' if quick else ''}")
    json_path = out_path / f"bench-{stamp}.json"
    write_json(json_path, machine, {"nodes": list(nodes), "backend": backend, "quick": quick}, runs)
    pngs = write_plots(out_path, {n: m["figures"] for n, m in runs.items()}, title)
    for n, meta in runs.items():
        (out_path / f"table-{n}.md").write_text(render_markdown(n, meta["figures"]))
    return json_path, pngs


def _cross_size(runs: dict[int, dict]) -> None:
    """The scaling target: the p50 at the largest size against the 5,000-node p50."""
    from reconciler.tools.bench.report import Figure
    from reconciler.tools.bench.scenarios import TARGET_N

    if TARGET_N not in runs:
        return
    base = next((f.value for f in runs[TARGET_N]["figures"] if f.name == "change latency p50"), None)
    for n, meta in runs.items():
        if n <= TARGET_N or any(f.name.startswith("p50 against") for f in meta["figures"]):
            continue
        p50 = next((f.value for f in meta["figures"] if f.name == "change latency p50"), None)
        meta["figures"].append(Figure("lease churn", f"p50 against the {TARGET_N:,}-node p50", p50, "ms",
                                      baseline=f"p50 at {TARGET_N:,} nodes", baseline_value=base,
                                      target="<= 1.3x baseline" if n == 20_000 else None))
