"""Figures, the table, the JSON file and the plots (pure, except for writing the files).

A ``Figure`` is one measured number with its baseline from the same run, the
ratio between them, the target the incremental-reconcile issue set for it
(when there is one), and what bounds it: ``kernel`` (the time is the
kernel's, whoever asks), ``agent`` (our code), or ``interval`` (a timer of
the agent decides it).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["Figure", "percentile", "read_json", "render_combined", "render_table", "write_json", "write_plots",
           "summarise"]


@dataclass(frozen=True)
class Figure:
    scenario: str
    name: str
    value: float | None                   # None: not measurable here ("n/a")
    unit: str
    baseline: str | None = None           # what it is compared with
    baseline_value: float | None = None
    target: str | None = None             # e.g. "<= 25 ms", "== 0", "<= 1.5x baseline"
    bound: str = "agent"                  # kernel | agent | interval
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline_value in (None, 0):
            return None
        return self.value / self.baseline_value

    @property
    def met(self) -> bool | None:
        """Whether ``target`` holds; None when there is no target or no value."""
        if self.target is None or self.value is None:
            return None
        op, _, rest = self.target.partition(" ")
        if rest.endswith("x baseline"):
            if self.ratio is None:
                return None
            limit, got = float(rest.split("x")[0]), self.ratio
        else:
            limit, got = float(rest.split()[0]), self.value
        return {"<=": got <= limit, "<": got < limit, "==": got == limit}[op]

    def to_json(self) -> dict:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["met"] = self.met
        return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "s" and abs(v) < 1:
        return f"{v * 1e3:.1f} ms"
    if unit in ("s", "MiB", "s CPU"):
        return f"{v:.2f} {unit}"
    if unit == "ms":
        return f"{v:.1f} ms"
    if float(v).is_integer():
        return f"{int(v):,}{' ' + unit if unit else ''}"
    return f"{v:.2f}{' ' + unit if unit else ''}"


def render_table(nodes: int, figures: Iterable[Figure]) -> str:
    """A plain-text table of one cluster size (the README's table is this, in Markdown)."""
    rows = [("scenario", "figure", "value", "baseline", "ratio", "target", "bound")]
    for f in figures:
        base = f"{f.baseline}: {_num(f.baseline_value, f.unit)}" if f.baseline else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        met = {True: "ok", False: "MISSED", None: ""}[f.met] if f.target else ""
        target = f"{f.target} {met}".strip() if f.target else ""
        rows.append((f.scenario, f.name, _num(f.value, f.unit), base, ratio, target, f.bound))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{nodes:,} nodes"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def render_markdown(nodes: int, figures: Iterable[Figure]) -> str:
    out = [f"| scenario | figure ({nodes:,} nodes) | value | baseline | ratio | target | bound |",
           "|---|---|---|---|---|---|---|"]
    for f in figures:
        base = f"{f.baseline}: {_num(f.baseline_value, f.unit)}" if f.baseline else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        met = {True: "met", False: "**missed**", None: ""}[f.met] if f.target else ""
        out.append(f"| {f.scenario} | {f.name} | {_num(f.value, f.unit)} | {base} | {ratio} | "
                   f"{(f.target or '') + (' ' + met if met else '')} | {f.bound} |")
    return "\n".join(out) + "\n"


def render_combined(runs: dict[int, list[Figure]]) -> str:
    """Every size side by side, one row per figure: the README's table.

    A cell is the value, its ratio to the baseline of the same run and, where the
    figure has a target at that size, whether it was met.  The rows keep the order
    in which the bench measured them (the first size's order, then any figure only
    a later size has).
    """
    sizes = sorted(runs)
    order: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], dict[int, Figure]] = {}
    for n in sizes:
        for f in runs[n]:
            # "4,999 unchanged re-puts: ..." at one size is "19,999 unchanged re-puts: ..." at
            # another: one row, named without the count.
            key = (f.scenario, re.sub(r"^[0-9][0-9,]* ", "", f.name))
            if key not in cells:
                order.append(key)
                cells[key] = {}
            cells[key][n] = f
    head = "| scenario | figure | " + " | ".join(f"{n:,} nodes" for n in sizes) + " | baseline (same run) | bound |"
    out = [head, "|---|---|" + "---|" * len(sizes) + "---|---|"]
    for key in order:
        row = cells[key]
        parts = []
        for n in sizes:
            f = row.get(n)
            if f is None:
                parts.append("")
                continue
            text = _num(f.value, f.unit)
            if f.ratio is not None:
                text += f" ({f.ratio:.2f}x)"
            if f.target and f.met is not None:
                text += f"; {f.target}: " + ("met" if f.met else "**missed**")
            parts.append(text)
        any_f = next(iter(row.values()))
        bases = [f"{_num(row[n].baseline_value, row[n].unit)}" for n in sizes
                 if n in row and row[n].baseline and row[n].baseline_value is not None]
        base = f"{any_f.baseline}: {' / '.join(bases)}" if any_f.baseline else ""
        out.append(f"| {key[0]} | {key[1]} | " + " | ".join(parts) + f" | {base} | {any_f.bound} |")
    return "\n".join(out) + "\n"


def summarise(runs: dict[int, list[Figure]], name: str) -> dict[int, float | None]:
    """One figure's value per cluster size."""
    return {n: next((f.value for f in figs if f.name == name), None) for n, figs in runs.items()}


def write_json(path: Path, machine: dict, args: dict, runs: dict[int, dict]) -> None:
    doc = {"machine": machine, "args": args,
           "runs": {str(n): {**meta, "figures": [f.to_json() for f in meta["figures"]]}
                    for n, meta in runs.items()}}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _series(runs: dict[int, list[Figure]], name: str, field: str = "value") -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for n in sorted(runs):
        f = next((f for f in runs[n] if f.name == name), None)
        v = None if f is None else getattr(f, field)
        if v is not None:
            xs.append(n)
            ys.append(v)
    return xs, ys


def write_plots(out: Path, runs: dict[int, list[Figure]], title: str) -> list[Path]:
    """Three PNGs: change latency, cold start and RSS against cluster size.  Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    plots = [   # (file, heading, y label, log scale, lines); baselines are far below us: log scales
        ("latency.png", "lease change, etcd put -> kernel", "milliseconds (log scale)", True,
         [("agent p50", "change latency p50", "value", 1, "o-"),
          ("agent p90", "change latency p90", "value", 1, "o--"),
          ("flanneld re-enactment p50", "change latency p50", "baseline_value", 1, "s-"),
          ("flanneld re-enactment p90", "change latency p90", "baseline_value", 1, "s--")]),
        ("cold_start.png", "cold start: N-1 nodes' entries installed", "seconds (log scale)", True,
         [("agent: start -> all routes", "agent start -> all routes", "value", 1, "o-"),
          ("apply (whole process)", "apply, whole process", "value", 1, "^-"),
          ("ip -batch + bridge -batch", "apply, whole process", "baseline_value", 1, "s-"),
          ("pyroute2, one call per object", "pyroute2 install", "value", 1, "d-")]),
        ("rss.png", "agent memory (VmRSS)", "MiB", False,
         [("after convergence", "RSS after convergence", "value", 1, "o-"),
          ("after the changes", "RSS after changes", "value", 1, "s--")]),
    ]
    for filename, heading, ylabel, log, lines in plots:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        for label, name, field, scale, style in lines:
            xs, ys = _series(runs, name, field)
            if xs:
                ax.plot(xs, [y * scale for y in ys], style, label=label)
        ax.set_xlabel("cluster size (nodes)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{heading}\n{title}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    return made


def read_json(path: Path) -> tuple[dict, dict[int, list[Figure]]]:
    """A results file back into (machine facts, size -> figures)."""
    doc = json.loads(Path(path).read_text())
    fields = set(Figure.__dataclass_fields__)
    runs = {int(n): [Figure(**{k: v for k, v in f.items() if k in fields}) for f in meta["figures"]]
            for n, meta in doc["runs"].items()}
    return doc, runs


def main(argv=None) -> int:
    """``python -m reconciler.tools.bench.report RESULTS.json... [--out DIR]``: the plots and tables again.

    With several files (say a ``--nodes 1000,5000`` run and a ``--nodes 20000`` run),
    their sizes are joined; where two files hold the same size the later file's run
    is the one used.  ``summary.md`` is every size side by side.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m reconciler.tools.bench.report")
    p.add_argument("results", nargs="+", help="bench-*.json files written by `python -m reconciler bench`")
    p.add_argument("--out", help="where to write the PNGs and tables (default: next to the first file)")
    args = p.parse_args(argv)
    runs: dict[int, list[Figure]] = {}
    docs = []
    for path in args.results:
        try:
            doc, more = read_json(Path(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {path}: not a bench results file ({exc})", file=sys.stderr)
            return 1
        docs.append(doc)
        runs.update(more)
    out = Path(args.out) if args.out else Path(args.results[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    m, a = docs[-1]["machine"], docs[-1]["args"]
    dates = sorted({d["machine"]["date"][:10] for d in docs})
    title = (f"{' to '.join(dict.fromkeys([dates[0], dates[-1]]))}, {m['cpus']} CPUs, Linux {m['kernel']}, "
             f"--netlink-backend {a['backend']}{', quick' if a.get('quick') else ''}")
    for path in write_plots(out, runs, title):
        print(path)
    for n, figs in sorted(runs.items()):
        (out / f"table-{n}.md").write_text(render_markdown(n, figs))
        print(render_table(n, figs))
    (out / "summary.md").write_text(render_combined(runs))
    print(out / "summary.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
