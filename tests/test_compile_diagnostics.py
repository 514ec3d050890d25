"""Semantic diagnostics: each tests/fixtures/diagnostics/semantic/<case>.pop next to <case>.txt, the text
`populace check` prints (run from the repository root). A first line `# args: --set n=abc` adds
command-line arguments. Table files used by the cases live in `_tables/`.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SEMANTIC = ROOT / "tests" / "fixtures" / "diagnostics" / "semantic"
CASES = sorted(SEMANTIC.glob("*.pop"))


def _args(case: Path) -> list[str]:
    first = case.read_text(encoding="utf-8").splitlines()[0]
    return shlex.split(first[len("# args:"):]) if first.startswith("# args:") else []


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_semantic_diagnostic(case, golden, in_repo_root, capsys):
    code = main(["check", str(case.relative_to(ROOT)), *_args(case)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if case.stem.startswith("w"):  # warnings only: printed on stdout, and the check passes
        assert code == 0 and err == ""
        golden(case.with_suffix(".txt"), out)
    else:
        assert code == 1 and out == ""
        golden(case.with_suffix(".txt"), err)


def test_every_compiler_code_has_a_fixture():
    emitted = set()
    for source in (ROOT / "compiler").rglob("*.py"):
        emitted |= set(re.findall(r'"([EW]1\d\d\d)"', source.read_text(encoding="utf-8")))
    shown = set()
    for golden_file in SEMANTIC.glob("*.txt"):
        shown |= set(re.findall(r"(?:error|warning)\[([EW]1\d\d\d)\]", golden_file.read_text(encoding="utf-8")))
    assert len(emitted) >= 40
    assert emitted - shown == set(), "codes the compiler emits with no fixture showing them"
    docs = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    compiler_part = docs[docs.index("## Compiler (semantic) errors"):]
    assert {c for c in emitted if f"## {c}\n" not in compiler_part} == set(), "codes without an entry in docs/diagnostics.md"
