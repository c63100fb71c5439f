"""iptables: read our chains with ``iptables-save``, write them with ``iptables-restore --noflush``.

The pure half parses ``iptables-save`` text into our chains (and nothing
else) and renders the ``iptables-restore`` input of a plan; the shell half,
``IptablesBackend``, runs the tools (argv lists, inside a namespace when
asked) for the backend the host uses.

iptables 1.8 comes as two backends that share the command line but not the
kernel: ``legacy`` (x_tables) and ``nft`` (nf_tables).  Rules must go where
the host's other rules are, so the backend is detected as kube-proxy's
``iptables-wrapper`` (which flannel's image installs) does: kubelet's
``KUBE-IPTABLES-HINT``/``KUBE-KUBELET-CANARY`` chains decide; without them,
the backend holding more rules (a DROP policy counts as one) wins; a tie is ``nft``
(docs/traffic-rules.md, "Which iptables").
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from typing import Callable, Iterable, Sequence

from reconciler.core.errors import ReconcilerError
from reconciler.rules.model import OUR_CHAINS, Family, IptChain, IptRule
from reconciler.rules.plan import IptWrite, jump_ops

__all__ = ["IptablesBackend", "parse_save", "restore_input", "ToolError", "tool_name"]

_HINT = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\b", re.M)
_FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

Runner = Callable[[Sequence[str], "str | None"], subprocess.CompletedProcess]


class ToolError(ReconcilerError):
    """A packet filter tool is missing or failed; names the command."""


def run_tool(netns: str | None, argv: Sequence[str], stdin: str | None,
             package: str | None = None) -> subprocess.CompletedProcess:
    """Run a rule tool (argument list, never a shell), inside ``netns`` when given; a missing
    tool or one that hangs is a ``ToolError`` naming it."""
    cmd = list(argv)
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        hint = f" (Debian package {package})" if package else ""
        raise ToolError(f"{argv[0]} is not installed{hint}") from exc
    except subprocess.TimeoutExpired:
        raise ToolError(f"{' '.join(argv)} did not finish within 60s") from None


def tool_name(family: Family, xt: str, what: str) -> str:
    """``iptables-nft-save``, ``ip6tables-legacy-restore``, ..."""
    base = "iptables" if family == "ipv4" else "ip6tables"
    return f"{base}-{xt}-{what}" if what else f"{base}-{xt}"


def parse_save(text: str, family: Family, xt: str = "") -> tuple[tuple[IptChain, ...], frozenset, dict]:
    """Our chains in ``iptables-save`` output, the foreign references to them, and built-in policies.

    Returns ``(chains, referenced, policies)``: ``chains`` holds each of our
    chains that exists (its rules in order, and the rules of its built-in
    chain that jump to it); ``referenced`` the (xt, family, table, chain) of
    ours that some other rule jumps to; ``policies`` ``{(table, chain):
    policy}`` of the built-in chains.  Everything else is ignored.
    """
    table = ""
    exists: dict[tuple[str, str], bool] = {}
    rules: dict[tuple[str, str], list[IptRule]] = {}
    jumps: dict[tuple[str, str], list[IptRule]] = {}
    referenced: set = set()
    policies: dict[tuple[str, str], str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if parts and OUR_CHAINS.get(parts[0], ("",))[0] == table:
                exists[(table, parts[0])] = True
            if len(parts) >= 2 and parts[1] != "-":
                policies[(table, parts[0])] = parts[1]
            continue
        if not line.startswith("-A "):
            continue
        try:
            toks = shlex.split(line)
        except ValueError:
            continue  # not a rule we could have written; leave it alone
        chain, spec = toks[1], tuple(toks[2:])
        rule = IptRule(family, table, chain, spec, xt)
        if OUR_CHAINS.get(chain, ("",))[0] == table:
            rules.setdefault((table, chain), []).append(rule)
            continue
        target = rule.target or _goto(spec)
        if target in OUR_CHAINS and OUR_CHAINS[target][0] == table:
            if OUR_CHAINS[target][1] == chain and rule.target == target:
                jumps.setdefault((table, target), []).append(rule)
            else:
                referenced.add((xt, family, table, target))
    chains = tuple(
        IptChain(family, t, name, tuple(jumps.get((t, name), ())), tuple(rules.get((t, name), ())), xt)
        for (t, name) in sorted(exists)
    )
    return chains, frozenset(referenced), policies


def _goto(spec: tuple[str, ...]) -> str | None:
    for i, tok in enumerate(spec[:-1]):
        if tok in ("-g", "--goto"):
            return spec[i + 1]
    return None


def restore_input(writes: Iterable[IptWrite]) -> str:
    """The ``iptables-restore --noflush`` input for one backend and family.

    Per table: declaring one of our chains (``:NAME - [0:0]``) creates it or
    flushes it, so its rules are then appended whole and in order; stale
    jump rules are deleted by their exact spec; a chain no longer wanted is
    deleted (``-X``) after its jumps, unless a foreign rule still jumps to
    it.  Only parsed networks, our subnet and fixed words ever get here.
    """
    by_table: dict[str, list[IptWrite]] = {}
    for w in writes:
        c = w.desired or w.live
        by_table.setdefault(c.table, []).append(w)
    out: list[str] = []
    for table in sorted(by_table):
        ws = by_table[table]
        out.append(f"*{table}")
        for w in ws:
            if w.rewrite_rules or w.desired is None:
                out.append(f":{(w.desired or w.live).name} - [0:0]")
        for w in ws:
            deletes, _ = jump_ops(w.desired, w.live)
            out += [r.save_line("-D") for r in deletes]
        for w in ws:
            if w.desired is not None and w.rewrite_rules:
                out += [r.save_line("-A") for r in w.desired.rules]
        for w in ws:
            _, adds = jump_ops(w.desired, w.live)
            out += [r.save_line("-A") for r in adds]
        for w in ws:
            if w.desired is None and not w.referenced:
                out.append(f"-X {w.live.name}")
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _version(text: str) -> tuple[int, ...]:
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else ()


class IptablesBackend:
    """Runs ``iptables[-nft|-legacy]-save``/``-restore`` for both families, optionally in a namespace.

    ``xt`` forces a backend (``nft`` or ``legacy``); ``None`` detects it.
    ``runner(argv, stdin)`` is how commands run (tests and namespaces).
    """

    def __init__(self, netns: str | None = None, xt: str | None = None, runner: Runner | None = None) -> None:
        self.netns = netns
        self._runner = runner or self._run
        self._forced = xt
        self._xt: str | None = xt   # detected once, at first use, like iptables-wrapper at start-up
        self._random_fully: bool | None = None

    # -- commands ----------------------------------------------------------
    def _run(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
        return run_tool(self.netns, argv, stdin)

    def read_file(self, path: str) -> str | None:
        """A file's content as seen from our namespace (``/proc/sys/net`` differs per namespace); None if missing."""
        if not self.netns:
            try:
                with open(path) as f:
                    return f.read()
            except OSError:
                return None
        proc = self._runner(["cat", path], None)
        return proc.stdout if proc.returncode == 0 else None

    def available(self, xt: str) -> bool:
        return shutil.which(tool_name("ipv4", xt, "save")) is not None

    def backends(self) -> tuple[str, ...]:
        """The iptables backends installed on this host (``nft``, ``legacy``)."""
        return tuple(xt for xt in ("nft", "legacy") if self.available(xt))

    def save(self, family: Family, xt: str, table: str | None = None) -> str:
        argv = [tool_name(family, xt, "save")]
        if table is not None:
            argv += ["-t", table]
        proc = self._runner(argv, None)
        if proc.returncode != 0:
            raise ToolError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc.stdout

    # -- which backend -----------------------------------------------------
    @property
    def xt(self) -> str:
        if self._xt is None:
            self._xt = self.detect()
        return self._xt

    def detect(self) -> str:
        """kube-proxy's rule (iptables-wrapper): kubelet's hint chains, else more rules, else nft."""
        have = self.backends()
        if not have:
            raise ToolError("neither iptables-nft nor iptables-legacy is installed (Debian package iptables)")
        if len(have) == 1:
            return have[0]
        dumps: dict[str, str] = {}
        for xt in have:
            text = ""
            for fam in _FAMILIES:
                # Never "-t mangle" with legacy: naming a table creates it.
                try:
                    text += self.save(fam, xt, "mangle" if xt == "nft" else None)
                except ToolError:
                    continue
            if _HINT.search(text):
                return xt
            dumps[xt] = text
        counts = {}
        for xt in have:
            text = ""
            for fam in _FAMILIES:
                try:
                    text += self.save(fam, xt)
                except ToolError:
                    continue
            # A DROP policy (Docker's FORWARD) counts like a rule: it is what our
            # accepts must sit beside.
            counts[xt] = sum(1 for line in text.splitlines()
                             if line.startswith("-A ") or (line.startswith(":") and " DROP " in line))
        return "legacy" if counts.get("legacy", 0) > counts.get("nft", 0) else "nft"

    def random_fully(self) -> bool:
        """flanneld's test (go-iptables ``HasRandomFully``): iptables 1.6.2 or newer.  Asked once."""
        if self._random_fully is None:
            proc = self._runner([tool_name("ipv4", self.xt, ""), "--version"], None)
            self._random_fully = proc.returncode == 0 and _version(proc.stdout) >= (1, 6, 2)
        return self._random_fully

    # -- read and write ----------------------------------------------------
    def read(self, xt: str, families: Iterable[Family] = _FAMILIES) -> tuple[tuple[IptChain, ...], frozenset, dict]:
        """Our chains in backend ``xt`` (both families), foreign references, and built-in policies."""
        chains: list[IptChain] = []
        refs: set = set()
        policies: dict = {}
        for fam in families:
            if shutil.which(tool_name(fam, xt, "save")) is None:
                continue  # no ip6tables here: nothing of ours can be in it (writing it would say so)
            if xt == "nft":
                # nf_tables reads a table without creating it.
                text = self.save(fam, xt, "filter") + self.save(fam, xt, "nat")
            else:
                text = self.save(fam, xt)  # all existing tables: "-t" would create them
            c, r, p = parse_save(text, fam, xt)
            chains += c
            refs |= r
            policies.update({(fam, *k): v for k, v in p.items()})
        return tuple(chains), frozenset(refs), policies

    def apply(self, xt: str, family: Family, writes: Sequence[IptWrite]) -> None:
        """One ``iptables-restore --noflush -w`` transaction; raises ``ToolError`` with its message."""
        text = restore_input(writes)
        argv = [tool_name(family, xt, "restore"), "--noflush", "-w"]
        proc = self._runner(argv, text)
        if proc.returncode != 0:
            raise ToolError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
