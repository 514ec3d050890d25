"""The provider's prompt cache: the part of the system prompt every agent shares gets its own cache
breakpoint, so it is written once for all agents. Real anthropic SDK against the fake server."""
from __future__ import annotations

from pathlib import Path

import pytest

from fake_llm import FakeLLM, tokens
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.engine.run import run_plan
from populace.runtime.models.llm import system_blocks

RULES = "Rule: name a whole number from 0 to 100; the closest to two thirds of the mean wins. " * 40

SCENARIO = """
scenario shared_rules {{
  seed = 2
  param n = 20
}}
model claude {{
  provider   = anthropic
  name       = "claude-sonnet-4-5"
  max_tokens = 8
}}
agent Player {{
  model  = claude
  system = "{rules}You are player {{{{self.id}}}}."
}}
population players = param.n x Player
workflow {{
  repeat 2 as round {{
    ask players "Round {{{{round}}}}: your number?" -> guess: int in 0..100
  }}
}}
"""


def test_the_shared_prefix_is_written_once_for_everyone(tmp_path, monkeypatch):
    path = tmp_path / "shared.pop"
    path.write_text(SCENARIO.format(rules=RULES))
    plan = plan_from_dict(compile_file(str(path)).plan)
    with FakeLLM(latency=0.0, reply=lambda prompt, request: "33") as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
        summary = run_plan(plan, executor="local", run_dir=str(tmp_path / "run"))
    claude = summary["models"]["claude"]
    shared = tokens(len(RULES + "You are player "))
    whole = [tokens(len(f"{RULES}You are player {i}.")) for i in range(20)]
    # round 1: agent 0 writes its whole prompt; the others read the shared part and write the rest.
    # round 2: every agent reads its whole prompt, written in round 1.
    assert claude["cache_read"] == 19 * shared + sum(whole)
    assert claude["cache_write"] == whole[0] + sum(w - shared for w in whole[1:])
    assert claude["prompt_cache_hit_rate"] > 0.9


def test_system_blocks_split_only_where_it_helps():
    mark = {"type": "ephemeral"}
    assert system_blocks("abcdef", 3, True) == [{"type": "text", "text": "abc", "cache_control": mark},
                                                {"type": "text", "text": "def", "cache_control": mark}]
    assert system_blocks("abcdef", 0, True) == [{"type": "text", "text": "abcdef", "cache_control": mark}]
    assert system_blocks("abcdef", 6, True) == [{"type": "text", "text": "abcdef", "cache_control": mark}]
    assert system_blocks("abcdef", 3, False) == [{"type": "text", "text": "abcdef"}]
