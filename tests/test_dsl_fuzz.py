"""`populace check` on mangled scenarios: only diagnostics and exit code 0 or 1, never a traceback.

Hypothesis mutates valid scenarios (lines deleted, duplicated, swapped; characters, tokens and bytes
inserted; the text cut short; deep nesting; very long lines), writes them to a file and runs the
command line's check, the path a user takes.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [p.read_bytes() for p in sorted(ROOT.glob("examples/*.pop")) + sorted((ROOT / "tests" / "fixtures" / "format").glob("*.pop"))]
TOKENS = ["{", "}", "(", ")", "[", "]", "{{", "}}", '"', '"""', "->", "=", "==", "~", ":", ",", "..", "%", "\\",
          "#", "\n", "else", "reuse", "x", "ask", "repeat", "workflow", "scenario", "in", "not", "-", "**", "1_000",
          "30%", "2min", "'", "@", "\t", "\r\n", "\ufeff", "é"]
_WORK = Path(tempfile.mkdtemp(prefix="populace-fuzz-"))


def run_check(data: bytes) -> tuple[int, str]:
    path = _WORK / "case.pop"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", str(path)])
    return code, out.getvalue() + err.getvalue()


def assert_clean(data: bytes) -> str:
    code, output = run_check(data)
    assert code in (0, 1), output
    assert "Traceback" not in output
    if code == 1:
        assert "error[E" in output
    return output


@st.composite
def mutated(draw) -> bytes:
    lines = draw(st.sampled_from(SEEDS)).split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "char", "token", "bytes", "truncate", "nest", "long"]))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind in ("char", "token", "bytes"):
            if kind == "char":
                piece = draw(st.characters(codec="utf-8")).encode("utf-8")
            elif kind == "token":
                piece = draw(st.sampled_from(TOKENS)).encode("utf-8")
            else:
                piece = draw(st.binary(min_size=1, max_size=4))
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + piece + lines[i][at:]
        elif kind == "truncate":
            lines = lines[: i + 1]
            lines[-1] = lines[-1][: draw(st.integers(0, len(lines[-1])))]
        elif kind == "nest":
            depth = draw(st.integers(50, 400))
            opener, closer = draw(st.sampled_from([("(", ")"), ("[", "]"), ("{a: ", "}"), ("f(", ")")]))
            lines.insert(i, b"workflow {\n  let deep = " + (opener * depth + "1" + closer * depth).encode() + b"\n}")
        else:
            lines[i] = lines[i] + b" + 1" * draw(st.integers(100, 3000))
    return b"\n".join(lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_scenarios_give_diagnostics_not_tracebacks(data):
    assert_clean(data)


def test_the_seeds_are_valid():
    for seed in SEEDS:
        code, output = run_check(seed)
        # Syntax-clean: compiler errors (E1xxx) are fine here, and the format fixtures import absent files.
        assert set(re.findall(r"error\[(E00\d\d)\]", output)) <= {"E0015"}, output


def test_empty_file():
    # nothing to check is said, not passed: `ok` would claim a scenario that is not there
    for data in (b"", b"\n\n  # only a comment\n"):
        code, output = run_check(data)
        assert code == 1 and "error[E1048]" in output


def test_ten_megabyte_line():
    output = assert_clean(b'scenario s {\n  description = "' + b"a" * 10_000_000 + b'"\n}\n')
    assert "ok:" in output
    output = assert_clean(b"# " + b"c" * 10_000_000 + b"\n")
    assert "error[E1048]" in output and len(output) < 2000
    output = assert_clean(b"x" * 10_000_000)
    assert "error[E0004]" in output and len(output) < 2000  # the excerpt is cut, not 10 MB long
    output = assert_clean(b"scenario s {\n  seed = " + b"1 + " * 250_000 + b"\n}\n")  # 1 MB of tokens
    assert "error[E0004]" in output and len(output) < 2000


def test_ten_thousand_nested_parentheses():
    output = assert_clean(b"workflow {\n  let x = " + b"(" * 10_000 + b"1" + b")" * 10_000 + b"\n}\n")
    assert "error[E0013]" in output


def test_deep_nesting_without_brackets():
    assert "error[E0013]" in assert_clean(b"workflow {\n  let x = " + b"{a: " * 5_000 + b"1" + b"}" * 5_000 + b"\n}\n")
    assert "error[E0013]" in assert_clean(b"workflow {\n  let x = " + b"not " * 10_000 + b"x\n}\n")
    assert "error[E0013]" in assert_clean(b"workflow {\n  let x = a" + b".b" * 10_000 + b"\n}\n")


def test_binary_junk():
    junk = bytes(range(256)) * 40
    assert "error[E0014]" in assert_clean(junk)
    assert "error[E0014]" in assert_clean(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert "error[E0001]" in assert_clean("workflow {\n  let x = 1 \u0007\n}\n".encode())
