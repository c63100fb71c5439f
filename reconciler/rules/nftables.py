"""nftables: read our tables with ``nft -j list``, replace them with one ``nft -f -`` transaction.

flanneld's nftables mode (``EnableNFTables``) keeps everything in two
tables of its own, ``ip flannel-ipv4`` and ``ip6 flannel-ipv6``, so the
whole content of those tables is ours and nothing outside them ever is.

The pure half turns ``nft -j`` rules back into the text ``nft list`` prints
for the expressions flanneld uses (anything else is kept as its JSON, so it
differs from every desired rule and is replaced), and renders the script
that replaces a table atomically: ``add table`` (so that the delete cannot
fail), ``delete table``, then the table with its chains and rules, in one
transaction.
"""
from __future__ import annotations

import json
import subprocess
from typing import Any, Iterable, Sequence

from reconciler.rules.iptables import ToolError, run_tool
from reconciler.rules.model import NFT_TABLES, NftChain, NftTable
from reconciler.rules.plan import NftWrite

__all__ = ["NftablesBackend", "expr_text", "parse_tables", "nft_script"]

_OURS = {(fam, name) for fam, name in NFT_TABLES.values()}
#: flanneld's comments (pkg/trafficmngr/nftables), written so that a table we
#: make looks like the one flanneld makes.
_CHAIN_COMMENTS = {"forward": "chain to accept flannel traffic",
                   "postrtg": "chain to manage traffic masquerading by flannel"}


def _value(v: Any, left: str) -> str:
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if isinstance(v, int) and left == "meta mark":
        return f"0x{v:08x}"
    if isinstance(v, (str, int)):
        return str(v)
    return json.dumps(v, sort_keys=True)


def _left(v: Any) -> str:
    if isinstance(v, dict) and "payload" in v:
        return f"{v['payload'].get('protocol')} {v['payload'].get('field')}"
    if isinstance(v, dict) and "meta" in v:
        return f"meta {v['meta'].get('key')}"
    return json.dumps(v, sort_keys=True)


def expr_text(expr: Sequence[dict]) -> str:
    """One rule's ``nft -j`` expressions as ``nft list`` words (for flanneld's vocabulary)."""
    words: list[str] = []
    for e in expr:
        # Every expression is a one-key object: {"match": {...}}, {"accept": null}, ...
        name, arg = next(iter(e.items())) if isinstance(e, dict) and len(e) == 1 else (None, e)
        if name == "match" and isinstance(arg, dict):
            left = _left(arg.get("left"))
            op = arg.get("op", "==")
            words.append(f"{left} {_value(arg.get('right'), left)}" if op in ("==", "in")
                         else f"{left} {op} {_value(arg.get('right'), left)}")
        elif name in ("accept", "drop", "return", "continue") and arg is None:
            words.append(name)
        elif name in ("jump", "goto") and isinstance(arg, dict):
            words.append(f"{name} {arg.get('target')}")
        elif name == "masquerade":
            flags = (arg or {}).get("flags") if isinstance(arg, dict) else None
            if isinstance(flags, list):
                flags = ",".join(flags)
            words.append(f"masquerade {flags}" if flags else "masquerade")
        elif name == "counter":
            words.append("counter")
        else:
            words.append(json.dumps(e, sort_keys=True))
    return " ".join(words)


def parse_tables(data: dict) -> tuple[NftTable, ...]:
    """Our tables in ``nft -j list ...`` output (other tables are ignored)."""
    items = data.get("nftables", []) if isinstance(data, dict) else []
    tables: dict[tuple[str, str], list[str]] = {}
    chains: dict[tuple[str, str, str], dict] = {}
    rules: dict[tuple[str, str, str], list[str]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if "table" in item:
            t = item["table"]
            if (t.get("family"), t.get("name")) in _OURS:
                tables.setdefault((t["family"], t["name"]), [])
        elif "chain" in item:
            c = item["chain"]
            key = (c.get("family"), c.get("table"), c.get("name"))
            if key[:2] in _OURS:
                chains[key] = c
                tables.setdefault(key[:2], []).append(key[2])
        elif "rule" in item:
            r = item["rule"]
            key = (r.get("family"), r.get("table"), r.get("chain"))
            if key[:2] in _OURS:
                rules.setdefault(key, []).append(expr_text(r.get("expr", [])))
    out = []
    for (fam, name), chain_names in sorted(tables.items()):
        cs = []
        for cn in chain_names:
            c = chains[(fam, name, cn)]
            prio = c.get("prio", 0)
            cs.append(NftChain(cn, str(c.get("type", "")), str(c.get("hook", "")),
                               prio if isinstance(prio, int) else 0, tuple(rules.get((fam, name, cn), ())),
                               str(c.get("policy", "accept"))))
        out.append(NftTable(fam, name, tuple(cs)))
    return tuple(out)


def _table_text(t: NftTable) -> list[str]:
    lines = [f"table {t.family} {t.name} {{", f'\tcomment "rules for {t.name}"']
    for c in t.chains:
        lines.append(f"\tchain {c.name} {{")
        if c.name in _CHAIN_COMMENTS:
            lines.append(f'\t\tcomment "{_CHAIN_COMMENTS[c.name]}"')
        lines.append(f"\t\t{c.declaration()}")
        lines += [f"\t\t{r}" for r in c.rules]
        lines.append("\t}")
    lines.append("}")
    return lines


def nft_script(writes: Iterable[NftWrite]) -> str:
    """One ``nft -f`` transaction replacing (or deleting) each of our tables in ``writes``."""
    out: list[str] = []
    for w in writes:
        t = w.desired or w.live
        out += [f"add table {t.family} {t.name}", f"delete table {t.family} {t.name}"]
        if w.desired is not None:
            out += _table_text(w.desired)
    return "\n".join(out) + "\n"


class NftablesBackend:
    """Runs ``nft`` (optionally inside a namespace) for our two tables."""

    def __init__(self, netns: str | None = None, runner=None) -> None:
        self.netns = netns
        self._runner = runner or self._run
        self._random_fully: bool | None = None   # asked once

    def _run(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
        return run_tool(self.netns, argv, stdin, package="nftables")

    def _json(self, argv: Sequence[str]) -> dict:
        proc = self._runner(argv, None)
        if proc.returncode != 0:
            raise ToolError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        try:
            return json.loads(proc.stdout or "{}")
        except ValueError as exc:
            raise ToolError(f"{' '.join(argv)}: output is not JSON: {exc}") from None

    def read(self) -> tuple[NftTable, ...]:
        """Our tables as they are (only the ones that exist)."""
        listed = self._json(["nft", "-j", "list", "tables"])
        present = {(t["table"].get("family"), t["table"].get("name"))
                   for t in listed.get("nftables", []) if isinstance(t, dict) and "table" in t}
        out: list[NftTable] = []
        for fam, name in sorted(present & _OURS):
            out += parse_tables(self._json(["nft", "-j", "list", "table", fam, name]))
        return tuple(out)

    def random_fully(self) -> bool:
        """flanneld's probe: does a ``masquerade fully-random`` rule pass ``nft --check``?"""
        if self._random_fully is None:
            probe = ("table ip frc-probe {\n\tchain p {\n\t\ttype nat hook postrouting priority srcnat;\n"
                     "\t\tip saddr != 127.0.0.1 masquerade fully-random\n\t}\n}\n")
            self._random_fully = self._runner(["nft", "-c", "-f", "-"], probe).returncode == 0
        return self._random_fully

    def apply(self, writes: Sequence[NftWrite]) -> None:
        """One ``nft -f -`` transaction; raises ``ToolError`` with nft's message."""
        proc = self._runner(["nft", "-f", "-"], nft_script(writes))
        if proc.returncode != 0:
            raise ToolError(f"nft -f - failed: {proc.stderr.strip()}")
