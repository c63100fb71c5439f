"""Fuzzing the operator's inputs: random bytes and random JSON
shapes as ``--leases-file``/``--live-file``, random text in every flag and every
``FLANNELD_*`` variable.  Whatever comes in: exit 0, 1 or 2, and an error is one
``error: ...`` line, never a traceback and never an internal error.

In-process through ``reconciler.cli.main`` for speed (the environment patched
per example), plus a few real subprocess runs.  Only ``plan --offline`` (pure)
runs for real; the other commands' handlers are replaced by a stub, so that no
example touches the kernel, etcd or a file it names.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cli import agent as agent_cli
from reconciler.cli import flags
from reconciler.cli import main as cli
from reconciler.cli.main import EXAMPLE_SNAPSHOT

EXAMPLE = str(EXAMPLE_SNAPSHOT)
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text an argv or an environment can carry: no NUL, no lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
SNAPSHOT = json.loads(Path(EXAMPLE).read_text())
LIVE_KEYS = ("links", "addresses", "routes", "neighs", "fdb")
FIELDS = ("name", "type", "mtu", "mac", "up", "vni", "local", "port", "learning", "dev", "cidr", "dst",
          "gateway", "onlink", "metric", "protocol", "ip", "underlay", "gbp")


def stub(args):
    return 0


@pytest.fixture
def pure(monkeypatch, tmp_path):
    """Every command but ``plan`` stubbed out (``plan`` is always run ``--offline``)."""
    for name in ("apply", "show"):
        monkeypatch.setitem(cli.COMMANDS, name, stub)
    for name in ("cmd_run", "cmd_snapshot", "cmd_demo"):
        monkeypatch.setattr(agent_cli, name, stub)
    return tmp_path


def call(argv, env=None):
    """main(argv) with only ``env`` as FLANNELD_* variables; (code, stdout, stderr)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    clean.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, clean, clear=True), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def check(code, err, argv):
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert all(line.startswith(("error: ", "warning: ", "note: ")) for line in lines), (argv, err)
    if code == 1:
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)
    else:
        assert not errors, (argv, err)


def _write(tmp: Path, content: bytes) -> str:
    fd, path = tempfile.mkstemp(dir=tmp, suffix=".json")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


@FUZZ
@given(content=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()),
       flag=st.sampled_from(["--leases-file", "--live-file"]))
def test_random_bytes_and_json_shapes_as_input_files(pure, content, flag):
    path = _write(pure, content)
    argv = ["plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", flag, path]
    if flag == "--leases-file":
        argv.append("--offline")  # --live-file says what to compare with; the two contradict each other
    code, _, err = call(argv)
    check(code, err, argv)


@FUZZ
@given(value=JSON, row=st.integers(0, 3), field=st.sampled_from(("key", "value", "lease", "mod_revision", "x")),
       top=st.sampled_from(("prefix", "revision", "kvs", None)))
def test_snapshots_with_one_field_of_a_random_shape(pure, value, row, field, top):
    snap = json.loads(json.dumps(SNAPSHOT))
    if top is not None:
        snap[top] = value
    else:
        snap["kvs"][row % len(snap["kvs"])][field] = value
    path = _write(pure, json.dumps(snap).encode())
    argv = ["plan", "--leases-file", path, "--public-ip", "198.18.0.1", "--offline", "--output", "json"]
    code, _, err = call(argv)
    check(code, err, argv)


REQUIRED = {"links": ("name", "type"), "addresses": ("dev", "cidr"), "routes": ("dst", "gateway", "dev"),
            "neighs": ("dev", "ip", "mac"), "fdb": ("dev", "mac", "dst")}
#: Values of the right type as often as of a random one, so the rows get past the type checks.
PLAUSIBLE = st.sampled_from(["flannel.1", "cni0", "vxlan", "100.64.2.0", "100.64.2.0/24", "0a:58:64:40:02:00",
                             "198.18.0.2", "bridge"]) | st.integers(-5, 70000) | st.booleans() | st.none() | JSON


@st.composite
def live_rows(draw, section):
    row = {f: draw(PLAUSIBLE) for f in REQUIRED[section]}
    row.update(draw(st.dictionaries(st.sampled_from(FIELDS), PLAUSIBLE, max_size=4)))
    return row


LIVE = st.fixed_dictionaries({}, optional={k: st.lists(live_rows(k), max_size=3) | JSON for k in LIVE_KEYS})


@FUZZ
@given(live=LIVE | JSON)
def test_live_states_of_random_shape(pure, live):
    path = _write(pure, json.dumps(live).encode())
    argv = ["plan", "--leases-file", EXAMPLE, "--public-ip", "198.18.0.1", "--live-file", path]
    code, _, err = call(argv)
    check(code, err, argv)


SPELLINGS = ("-{}={}", "--{}={}", "-{} {}", "--{} {}")


@FUZZ
@given(flag=st.sampled_from(flags.FLAGS), text=TEXT, spelling=st.sampled_from(SPELLINGS),
       via_env=st.booleans(), command=st.sampled_from(("plan", "apply", "show", "run", "snapshot")),
       unsupported=st.none() | st.tuples(st.sampled_from(flags.UNSUPPORTED), TEXT))
def test_random_text_in_every_flag_and_variable(pure, flag, text, spelling, via_env, command, unsupported):
    argv = [command]
    if command in ("plan", "apply", "show", "snapshot"):
        argv += ["--leases-file", EXAMPLE]
    if command in ("plan", "apply", "show", "run"):
        argv += ["--public-ip", "198.18.0.1"]
    env = {}
    if via_env:
        if text:
            env[flag.env] = text
    else:
        dash = "-" if spelling.startswith("-{") else "--"
        if "=" in spelling:
            argv.append(f"{dash}{flag.name}={text}")
        else:
            argv += [f"{dash}{flag.name}", text]
    if unsupported is not None:
        u, utext = unsupported
        if utext:
            env[u.env] = utext
    if command == "plan":
        argv.append("--offline")  # last, so it wins: plan never reads this host's kernel
    code, _, err = call(argv, env)
    check(code, err, argv)


@pytest.mark.parametrize("argv,env,code,start", [
    (["plan", "-leases-file", "{bin}", "-public-ip=198.18.0.1", "-offline"], {}, 1, "error: --leases-file "),
    (["run", "--help"], {"FLANNELD_HEALTHZ_PORT": "abc"}, 0, None),
    (["run"], {"FLANNELD_HEALTHZ_PORT": "abc"}, 1, "error: FLANNELD_HEALTHZ_PORT='abc': not an integer"),
    (["run", "-public-ip=224.0.0.1"], {}, 1, "error: --public-ip '224.0.0.1': "),
    (["plan", "-leases-file", "{deep}", "-offline"], {}, 1, "error: --leases-file "),
    (["plan", "-leases-file=" + EXAMPLE, "-public-ip=198.18.0.2", "-offline"], {"FLANNELD_UNDERLAY_MTU": "1400"},
     2, None),
])
def test_real_processes(tmp_path, argv, env, code, start):
    (tmp_path / "bin").write_bytes(bytes(range(256)))
    (tmp_path / "deep").write_bytes(b"[" * 200_000)
    argv = [a.format(bin=tmp_path / "bin", deep=tmp_path / "deep") for a in argv]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    proc = subprocess.run([sys.executable, "-m", "reconciler", *argv], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    if start is not None:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(start), proc.stderr
    elif code == 0:
        assert "--healthz-port" in proc.stdout
    else:
        assert "mtu 1350" in proc.stdout and proc.stderr == ""
