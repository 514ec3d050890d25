"""The formatter: parse -> print -> parse gives an equal tree, printing is idempotent, comments survive.

Goldens: tests/fixtures/format/<case>.pop (messy input) -> <case>.formatted.pop (canonical output).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from populace.dsl.format import format_module, format_source
from populace.dsl.load import parse_source
from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
FORMAT_FIXTURES = ROOT / "tests" / "fixtures" / "format"


def _parsing_files() -> list[Path]:
    files = sorted(ROOT.glob("examples/**/*.pop")) + sorted((ROOT / "tests" / "fixtures").glob("**/*.pop"))
    keep = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "\x00" not in text and parse_source(text, str(path))[0] is not None:
            keep.append(path)
    return keep


PARSING = _parsing_files()
CASES = sorted(p for p in FORMAT_FIXTURES.glob("*.pop") if not p.name.endswith(".formatted.pop"))


def _comments(text: str) -> list[str]:
    from populace.dsl.format import _scan_comments

    return [c.text for c in _scan_comments(text)]


@pytest.mark.parametrize("path", PARSING, ids=lambda p: str(p.relative_to(ROOT)))
def test_round_trip_and_idempotence(path):
    text = path.read_text(encoding="utf-8")
    before, _ = parse_source(text, "x.pop")
    printed = format_source(text, "x.pop")
    after, diagnostics = parse_source(printed, "x.pop")
    assert not diagnostics, printed
    assert after.decls == before.decls
    assert format_source(printed, "x.pop") == printed
    assert _comments(printed) == _comments(text)  # every comment kept, in order


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_format_golden(case, golden):
    golden(case.with_suffix(".formatted.pop"), format_source(case.read_text(encoding="utf-8"), case.name))


def test_goldens_are_canonical():
    for case in CASES:
        formatted = case.with_suffix(".formatted.pop").read_text(encoding="utf-8")
        assert format_source(formatted, case.name) == formatted


@pytest.mark.parametrize("expression", [
    "(a + b) * c", "a - (b - c)", "a - b - c", "(a ** b) ** c", "a ** b ** c", "-a ** b", "(-a) ** b",
    "not a == b", "(not a) == b", "(a < b) == c", "(a if b else c) if d else e", "a if b else (c if d else e)",
    "(a or b) and c", "a or b and c", "(50%) - 1", "[30%][0]", "(10%) if a else b", "f(x)(y)[z].w",
    "(a in b) in c", "-(-a)", "not not a", '{a: {b: 1}, "if": 2}', "(1, 2)", "1_000 * 2.5e3",
])
def test_minimal_parentheses_keep_the_tree(expression):
    text = f"workflow {{\n  let v = {expression}\n}}\n"
    before, _ = parse_source(text, "x.pop")
    printed = format_source(text, "x.pop")
    after, diagnostics = parse_source(printed, "x.pop")
    assert not diagnostics, printed
    assert after == before
    assert format_source(printed, "x.pop") == printed


@pytest.mark.parametrize("value", ["a\nb", "  indented\nnot", "tabs\tand \"\"\" quotes", "{{ not a template",
                                   "ends with {", "back\\slash\nline", "", "x\n\n\ny"])
def test_strings_read_back(value):
    from populace.dsl.build import quote_string

    text = f"model m {{\n  description = {quote_string(value)}\n}}\n"
    printed = format_source(text, "x.pop")
    module, diagnostics = parse_source(printed, "x.pop")
    assert not diagnostics, printed
    assert module.decls[0].settings[0].value.value == value
    assert format_source(printed, "x.pop") == printed


def test_format_module_without_source_prints_no_comments():
    module, _ = parse_source("scenario s {  # gone\n  seed = 1\n}\n", "x.pop")
    assert format_module(module) == "scenario s {\n  seed = 1\n}\n"


def test_fmt_check_and_write(tmp_path, capsys):
    case = FORMAT_FIXTURES / "spacing.pop"  # no imports: `fmt` loads the whole program first
    messy = tmp_path / "messy.pop"
    shutil.copy(case, messy)
    tidy = tmp_path / "tidy.pop"
    shutil.copy(case.with_suffix(".formatted.pop"), tidy)

    assert main(["fmt", "--check", str(tidy)]) == 0
    assert main(["fmt", "--check", str(messy)]) == 1
    assert "would reformat" in capsys.readouterr().err

    assert main(["fmt", str(messy)]) == 0
    assert capsys.readouterr().out == tidy.read_text(encoding="utf-8")

    assert main(["fmt", "--write", str(messy)]) == 0
    assert messy.read_text(encoding="utf-8") == tidy.read_text(encoding="utf-8")
    assert main(["fmt", "--check", str(messy)]) == 0


def test_fmt_refuses_a_broken_file(tmp_path, capsys):
    broken = tmp_path / "broken.pop"
    broken.write_text("scenario s {\n  seed = \n}\n", encoding="utf-8")
    assert main(["fmt", "--write", str(broken)]) == 1
    assert "error[E0004]" in capsys.readouterr().err
    assert broken.read_text(encoding="utf-8") == "scenario s {\n  seed = \n}\n"
