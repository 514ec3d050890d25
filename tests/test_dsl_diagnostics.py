"""Syntax diagnostics: each tests/fixtures/diagnostics/syntax/<case>.pop next to <case>.txt, the text
`populace check` prints (run from the repository root). Helpers for import cases live in `_imports/`.
Binary inputs (not UTF-8, NUL bytes) are written by the test instead of stored.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SYNTAX = ROOT / "tests" / "fixtures" / "diagnostics" / "syntax"
CASES = sorted(SYNTAX.glob("*.pop"))
GENERATED = {
    "e0014_invalid_utf8": b"scenario s {\n  description = \"caf\xe9\"\n}\n",
    "e0014_nul_byte": b"scenario s {\n  seed = 42\x00\n}\n",
}


def _check(argv, capsys) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_syntax_diagnostic(case, golden, in_repo_root, capsys):
    code, out, err = _check([str(case.relative_to(ROOT))], capsys)
    assert code == 1 and out == ""
    assert "Traceback" not in err
    golden(case.with_suffix(".txt"), err)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_binary_input(name, golden, tmp_path, monkeypatch, capsys):
    (tmp_path / f"{name}.pop").write_bytes(GENERATED[name])
    monkeypatch.chdir(tmp_path)
    code, out, err = _check([f"{name}.pop"], capsys)
    assert code == 1
    golden(SYNTAX / f"{name}.txt", err)


def test_missing_file_on_the_command_line(golden, in_repo_root, capsys):
    code, _, err = _check(["tests/fixtures/diagnostics/syntax/_imports/absent.pop"], capsys)
    assert code == 1
    golden(SYNTAX / "e0015_missing_file.txt", err)


def test_every_syntax_code_has_a_fixture_and_a_doc_entry():
    codes = set()
    for source in (ROOT / "dsl").glob("*.py"):
        codes |= set(re.findall(r'"(E00\d\d)"', source.read_text(encoding="utf-8")))
    goldens = "".join(p.read_text(encoding="utf-8") for p in SYNTAX.glob("*.txt"))
    docs = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    assert codes >= {f"E00{i:02d}" for i in range(1, 18)} | {"E0020"}
    assert {c for c in codes if f"error[{c}]" not in goldens} == set()
    assert {c for c in codes if f"## {c}" not in docs} == set()


def test_json_output_and_exit_codes(in_repo_root, capsys):
    code, out, _ = _check(["--format", "json", "tests/fixtures/diagnostics/syntax/multiple_errors.pop"], capsys)
    assert code == 1
    diagnostics = json.loads(out)
    assert [d["code"] for d in diagnostics] == ["E0001", "E0004", "E0004", "E0008"]
    for d in diagnostics:
        assert set(d) == {"code", "message", "span", "label", "hint", "severity"}
        assert set(d["span"]) == {"file", "line", "column", "end_line", "end_column"}
        assert d["span"]["file"] == "tests/fixtures/diagnostics/syntax/multiple_errors.pop"
        assert d["severity"] == "error"

    code, out, _ = _check(["--format", "json", "examples/guess_two_thirds.pop"], capsys)
    assert code == 0
    assert json.loads(out) == []

    code, out, err = _check(["examples/guess_two_thirds.pop"], capsys)
    assert code == 0 and out == "ok: examples/guess_two_thirds.pop\n" and err == ""


def test_errors_in_several_files_are_reported_together(in_repo_root, capsys):
    files = ["tests/fixtures/diagnostics/syntax/e0002_unclosed_string.pop",
             "tests/fixtures/diagnostics/syntax/e0009_bad_escape.pop"]
    code, _, err = _check(files, capsys)
    assert code == 1
    assert "error[E0002]" in err and "error[E0009]" in err and err.rstrip().endswith("2 errors")
