"""What the paper's 1,000,000-agent game costs on Claude, priced four ways from a recorded run.

The paper's scenario (examples/paper/guess.pop: 5 rounds, memory of the game) is run with its
model_a on `claude-haiku-4-5` against the fake Anthropic server on 127.0.0.1 (tests/fake_llm.py:
tokens are characters / 4; a system prompt with cache_control is a cache write the first time and
a cache read after). The run's token counts (summary.json) are scaled to 1,000,000 agents (every
agent sends the same number of calls of the same size, so they scale linearly) and priced:

- plain: every input token at the input price (no prompt cache);
- cached prefix: the cache reads and writes as the run recorded them;
- batch: plain at the batch discount (half price, Anthropic and OpenAI);
- batch + cached prefix.

The fake server caches a system prompt of any length; the real API caches only a prefix of at
least the model's minimum (4,096 tokens for claude-haiku-4-5). The script says which applies to
this scenario's prompts, so the "cached" figures are not read as a saving the real API would give.

    python benchmarks/llm_cost.py [--players 2000] [--grouping off|both]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MODELS = """
model model_a {
  provider    = anthropic
  name        = "claude-haiku-4-5"
  max_tokens  = 16
  in_flight   = 256
}
model model_b {
  provider = python
  function = "populace.runtime.policies.paper:model_b"
}
model model_c {
  provider = python
  function = "populace.runtime.policies.paper:model_c"
}
model writer {
  provider = mock
}
"""
BATCH_DISCOUNT = 0.5  # Anthropic Message Batches and OpenAI's Batch API: half of every token price


def record(players: int, grouping: str) -> tuple[dict, dict, int]:
    """Run the paper's scenario on the fake server: (model_a's counts, its price, agents run)."""
    from fake_llm import FakeLLM
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine.run import run_plan

    work = Path(tempfile.mkdtemp(prefix="populace-cost-"))
    try:
        for name in ("guess.pop", "groups.csv"):
            shutil.copy(ROOT / "examples" / "paper" / name, work / name)
        (work / "models.pop").write_text(MODELS)
        overrides = [f"players={players}", f"grouping={grouping}", "per_group=20"]
        plan = plan_from_dict(compile_file(str(work / "guess.pop"), overrides).plan)

        def reply(prompt: str, request: dict) -> str:
            return "33"

        with FakeLLM(latency=0.0, reply=reply) as fake:
            os.environ["ANTHROPIC_BASE_URL"] = fake.url
            os.environ.setdefault("ANTHROPIC_API_KEY", "fake-key")
            summary = run_plan(plan, executor="local", run_dir=str(work / "run"), folder=str(work))
        assert summary["status"] == "finished", summary
        agents = summary["agents"]
        return summary["models"]["model_a"], plan.models["model_a"].price, agents
    finally:
        shutil.rmtree(work, ignore_errors=True)


def price_four_ways(m: dict, price: dict, scale: float) -> list[tuple[str, float]]:
    inp, out = m["tokens_in"] * scale, m["tokens_out"] * scale
    read, write = m.get("cache_read", 0) * scale, m.get("cache_write", 0) * scale
    plain = ((inp + read + write) * price["input"] + out * price["output"]) / 1e6
    cached = (inp * price["input"] + read * price["cache_read"] + write * price["cache_write"]
              + out * price["output"]) / 1e6
    return [("plain", plain), ("cached prefix", cached), ("batch", plain * BATCH_DISCOUNT),
            ("batch + cached prefix", cached * BATCH_DISCOUNT)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--players", type=int, default=2000)
    parser.add_argument("--grouping", default="off", choices=("off", "education", "occupation", "both"))
    args = parser.parse_args(argv)
    from populace.compiler.explain import MIN_CACHEABLE

    m, price, agents = record(args.players, args.grouping)
    scale = 1_000_000 / agents
    calls = m["calls"] * scale
    total_in = (m["tokens_in"] + m.get("cache_read", 0) + m.get("cache_write", 0)) / m["calls"]
    system = (m.get("cache_read", 0) + m.get("cache_write", 0)) / m["calls"]
    print(f"recorded: {agents:,} agents, {m['calls']:,} calls; per call {total_in:.0f} input tokens "
          f"(system prompt {system:.0f}), {m['tokens_out'] / m['calls']:.1f} output")
    print(f"price (USD per million tokens): {price}")
    print(f"scaled to 1,000,000 agents: {calls:,.0f} calls")
    rows = price_four_ways(m, price, scale)
    for name, cost in rows:
        print(f"  {name:<24} ${cost:>12,.2f}")
    minimum = MIN_CACHEABLE["claude-haiku-4-5"]
    if system < minimum:
        print(f"the real API: the system prompt (~{system:.0f} tokens) is under claude-haiku-4-5's minimum "
              f"cacheable {minimum:,} tokens, so it would not be cached: cached = plain (${rows[0][1]:,.2f}), "
              f"batch + cached = batch (${rows[2][1]:,.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
