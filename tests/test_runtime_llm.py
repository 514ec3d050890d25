"""Real SDKs against fake servers on 127.0.0.1: providers, limits, retries, re-asks, cache, cost."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from fake_llm import FakeLLM
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.models.limits import Limiter
from populace.runtime.engine.run import run_plan

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"

OPENAI_SCENARIO = """
scenario vote {{
  seed = 3
  param n = 60
}}
model local {{
  provider = openai
  name = "llama-3-8b"
  base_url = [{urls}]
  api_key_env = "FAKE_KEY"
  in_flight = {in_flight}
  max_tokens = 16
}}
persona p {{
  mood ~ choice("calm", "angry")
}}
agent Voter {{
  persona = p
  model = local
  system = "You are {{{{persona.mood}}}}."
}}
population voters = param.n x Voter
workflow {{
  ask voters "Pick a number for agent {{{{persona.mood}}}}." -> pick: int in 0..100
  record mean_pick = mean(voters.pick), answered = count(voters.pick)
}}
"""


def claude_flagship(tmp_path: Path, extra: str = "") -> Path:
    text = FLAGSHIP.read_text().replace("model   = level_k", "model   = claude")
    text = text.replace("  in_flight   = 512", "  in_flight   = 512" + extra)
    path = tmp_path / "claude.pop"
    path.write_text(text)
    return path


def run(path, tmp_path, name, executor="local", shards=None, overrides=(), **kw):
    plan = plan_from_dict(compile_file(str(path), list(overrides)).plan)
    run_dir = tmp_path / name
    summary = run_plan(plan, executor=executor, shards=shards, run_dir=str(run_dir), **kw)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, run_dir


def answers(run_dir: Path) -> pd.DataFrame:
    files = sorted((run_dir / "asks").rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f).assign(file=f.name) for f in files], ignore_index=True)


def varied_reply(prompt: str, request: dict) -> str:
    """An answer that differs by agent (the system prompt names the persona) and by round."""
    system = request.get("system") or ""
    if isinstance(system, list):
        system = " ".join(b.get("text", "") for b in system)
    return str((sum(map(ord, system + prompt)) * 7) % 101)


@pytest.fixture
def anthropic_env(monkeypatch):
    def start(**options):
        fake = FakeLLM(reply=varied_reply, **options).start()
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-never-logged")
        return fake
    return start


@pytest.mark.slow
def test_flagship_on_ray_against_fake_anthropic(tmp_path, anthropic_env, ray_session):
    fake = anthropic_env(latency=0.01)
    try:
        summary, metrics, run_dir = run(claude_flagship(tmp_path), tmp_path, "ray", "ray", 2, ["players=120"])
    finally:
        fake.stop()
    assert summary["status"] == "finished" and summary["errors"] == 0
    claude = summary["models"]["claude"]
    stats = fake.stats()
    assert claude["calls"] == stats.by_status[200] == 360
    assert claude["tokens_in"] == stats.input_tokens and claude["tokens_out"] == stats.output_tokens
    assert claude["cache_read"] == stats.cache_read_input_tokens > 0  # the system prompt is cached
    price = {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25}
    want = (stats.input_tokens * price["input"] + stats.output_tokens * price["output"]
            + stats.cache_read_input_tokens * price["cache_read"]
            + stats.cache_creation_input_tokens * price["cache_write"]) / 1e6
    assert claude["cost_usd"] == pytest.approx(want) and summary["cost_usd"] == pytest.approx(want, abs=1e-6)
    read, write = stats.cache_read_input_tokens, stats.cache_creation_input_tokens
    assert claude["prompt_cache_hit_rate"] == round(read / (stats.input_tokens + read + write), 4)
    saved = (read * (price["input"] - price["cache_read"]) - write * (price["cache_write"] - price["input"])) / 1e6
    assert claude["prompt_cache_saved_usd"] == pytest.approx(saved, abs=1e-6) and saved > 0
    table = answers(run_dir)
    assert len(table) == 360 and table["value"].between(0, 100).all()
    assert (table["reply"].astype(int) == table["value"]).all()
    assert [m["round"] for m in metrics] == [1, 2, 3]
    # the key never reaches the run directory
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix != ".sqlite":
            assert b"test-key-never-logged" not in f.read_bytes(), f


def test_faults_give_the_same_results_as_no_faults(tmp_path, anthropic_env):
    fake = anthropic_env(latency=0.0)
    try:
        clean, clean_metrics, clean_dir = run(claude_flagship(tmp_path), tmp_path, "clean", overrides=["players=40"])
    finally:
        fake.stop()
    fake = anthropic_env(latency=0.0, fail_first_n=1, fail_status=429, retry_after=0.01, drop_first_n=1,
                         malformed_first_n=1, out_of_range_first_n=1)
    try:
        faulty, faulty_metrics, faulty_dir = run(claude_flagship(tmp_path), tmp_path, "faulty", overrides=["players=40"])
    finally:
        fake.stop()
    assert faulty_metrics == clean_metrics
    pd.testing.assert_series_equal(answers(faulty_dir)["value"], answers(clean_dir)["value"])
    m = faulty["models"]["claude"]
    # Agents with the same persona send the same conversation, and the fake counts attempts per
    # conversation, so each distinct one meets each fault once: 2 retried faults, 2 re-asked.
    distinct = clean["models"]["claude"]["calls"] - 0
    assert 0 < m["retries"] <= 2 * distinct and 0 < m["reasks"] <= 2 * distinct
    assert m["failures"] == 0 and faulty["errors"] == 0
    events = [json.loads(x) for x in (faulty_dir / "events.jsonl").read_text().splitlines()]
    retries = [e for e in events if e["type"] == "model_retry"]
    assert retries and {"RateLimitError 429", "APIConnectionError"} <= {e["error"].split(":")[0] for e in retries}


def test_unparsable_replies_become_missing_values_with_errors(tmp_path, anthropic_env):
    fake = anthropic_env(fault=lambda identity, attempt, body: "malformed")
    try:
        summary, metrics, run_dir = run(claude_flagship(tmp_path), tmp_path, "bad", overrides=["players=20", "rounds=1"])
    finally:
        fake.stop()
    table = answers(run_dir)
    assert table["value"].isna().all() and summary["errors"] == 20
    assert table["error"].str.startswith("unparsable reply after 2 re-asks").all()
    assert table["reply"].notna().all()  # the reply that arrived is kept
    # every answer failed: the run cannot end `finished`; it says why, and nothing after the ask ran
    assert summary["status"] == "failed" and metrics == []
    assert "20 of 20 answers failed" in summary["error"] and "unparsable reply" in summary["error"]
    failures = json.loads((run_dir / "failures.json").read_text())
    assert failures["steps"][0]["failed"] == 20 and failures["steps"][0]["errors"][0]["agent"] == 0


@pytest.mark.slow
def test_in_flight_limit_holds_across_shards(tmp_path, monkeypatch, ray_session):
    with FakeLLM(latency=0.15) as fake:
        monkeypatch.setenv("FAKE_KEY", "k")
        path = tmp_path / "vote.pop"
        path.write_text(OPENAI_SCENARIO.format(urls=f'"{fake.openai_url}"', in_flight=6))
        summary, metrics, _ = run(path, tmp_path, "limited", "ray", 3, ["n=120"])
        peak = fake.peak_in_flight
    assert summary["errors"] == 0 and metrics[0]["answered"] == 120
    assert 3 <= peak <= 6, peak  # 3 shards x 2 each: the declared 6 holds across the cluster


def test_openai_load_balances_base_urls_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    cache = tmp_path / "shared.sqlite"
    with FakeLLM(latency=0.0) as a, FakeLLM(latency=0.0) as b:
        path = tmp_path / "vote.pop"
        path.write_text(OPENAI_SCENARIO.format(urls=f'"{a.openai_url}", "{b.openai_url}"', in_flight=8))
        first, m1, d1 = run(path, tmp_path, "first", cache=str(cache))
        assert a.requests > 10 and b.requests > 10 and a.requests + b.requests == 60
        second, m2, d2 = run(path, tmp_path, "second", cache=str(cache))
        assert a.requests + b.requests == 60  # every answer came from the cache: nothing paid twice
    assert m1 == m2 and second["models"]["local"]["cache_hits"] == 60 and second["calls"] == 0
    pd.testing.assert_frame_equal(answers(d1).drop(columns="file"), answers(d2).drop(columns="file"))
    # --replay: answers from the cache; a prompt not in it is refused, not paid for
    replayed, m3, _ = run(path, tmp_path, "replay", cache=str(cache), replay=True)
    assert m3 == m1 and replayed["calls"] == 0
    other, m4, d4 = run(path, tmp_path, "replay-more", cache=str(cache), replay=True, overrides=["n=70"])
    errors = answers(d4).dropna(subset=["error"])
    assert len(errors) == 10 and errors["error"].str.contains("not in the cache").all()


def test_per_minute_limit_spaces_requests():
    async def go():
        limiter = Limiter(per_minute=5, tokens_per_minute=None, window=0.5)
        began = time.monotonic()
        for _ in range(12):
            await limiter.acquire(10)
        return time.monotonic() - began

    elapsed = asyncio.run(go())
    assert 0.9 <= elapsed < 3.0  # 12 requests at 5 per 0.5 s need two full windows of waiting


def test_tokens_per_minute_limit_waits():
    async def go():
        limiter = Limiter(per_minute=None, tokens_per_minute=100, window=0.3)
        began = time.monotonic()
        for _ in range(3):
            await limiter.acquire(60)
        return time.monotonic() - began

    assert asyncio.run(go()) >= 0.5
