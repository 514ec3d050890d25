"""`populace explain`: each tests/fixtures/explain/<case>.pop next to <case>.txt, the text it prints (run
from the repository root). The estimates are deterministic, so the goldens pin the arithmetic.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from populace.compiler import compile_file
from populace.compiler.explain import explain
from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
EXPLAIN = ROOT / "tests" / "fixtures" / "explain"
CASES = sorted(EXPLAIN.glob("*.pop"))


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_explain_golden(case, golden, in_repo_root, capsys):
    assert main(["explain", str(case.relative_to(ROOT))]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    golden(case.with_suffix(".txt"), out)


def test_a_million_claude_agents_cost_real_dollars(in_repo_root):
    text = explain(compile_file("tests/fixtures/explain/claude_million.pop"))
    assert "1,000,000 agents, 20 distinct texts, 20 calls" in text
    assert "9,000,000 calls to haiku" in text and "$1,665.00" in text  # 9M x (165 x $1 + 4 x $5) / 1M


def test_overrides_change_the_counts_not_the_shape(in_repo_root, capsys):
    assert main(["explain", "examples/guess_two_thirds.pop", "--set", "players=1000000", "--set", "rounds=1000"]) == 0
    big = capsys.readouterr().out
    assert "players: 1,000,000 agents" in big and "repeat 1,000 times as round" in big
    assert "1,000,000 agents x 1,000 times = 1,000,000,000 calls to level_k; 45 distinct prompts per step" in big
    assert "1,000,000 agents, 45 distinct texts, 45 calls" in big


def test_explain_reports_errors_like_check(in_repo_root, capsys):
    assert main(["explain", "tests/fixtures/diagnostics/semantic/e1021_set_unknown_param.pop", "--set", "player=3"]) == 1
    assert "error[E1021]" in capsys.readouterr().err


def test_explain_says_whether_a_budget_covers_the_run(in_repo_root, capsys):
    case = "tests/fixtures/explain/prompt_cache.pop"
    assert main(["explain", case, "--budget", "250usd"]) == 0
    assert "budget $250.00: covers the estimate ($209.70, 84% of the budget)" in capsys.readouterr().out
    assert main(["explain", case, "--budget", "$21"]) == 0
    assert "budget $21.00: does not cover the estimate $209.70; the run would stop after about 10% of its calls" \
        in capsys.readouterr().out
    assert main(["explain", "tests/fixtures/explain/unknown_prices.pop", "--budget", "5"]) == 0
    assert "cannot be checked, a model has no price" in capsys.readouterr().out


def test_a_short_system_prompt_is_not_expected_to_be_cached(in_repo_root):
    text = explain(compile_file("tests/fixtures/explain/claude_million.pop"))
    assert "prompt cache (haiku): none expected" in text and "under the 4,096 tokens" in text
