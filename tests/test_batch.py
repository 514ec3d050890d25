"""`batch = true`: asks go through the providers' batch APIs (Anthropic Message Batches, OpenAI Batch)
at half price, with the same answers as direct calls; failed items are retried and malformed replies
re-asked in later batches; a killed run resumes without submitting its batches again. Real SDKs
against tests/fake_llm.py's batch endpoints; the real CLI for the killed run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.engine.resume import resume_run
from populace.runtime.engine.run import run_plan

ROUNDS, N = 4, 24
SCENARIO = """
scenario batched {{
  seed = 11
  param n = {n}
}}
model m {{
  provider = {provider}
  name = "{name}"
  base_url = "{url}"
  api_key_env = "BATCH_KEY"
  max_tokens = 8
  price = {{input: 2, output: 10}}
  batch = {batch}
  batch_poll = 0.2
}}
persona p {{
  mood ~ choice("calm", "angry", "curious")
}}
agent Voter {{
  persona = p
  model = m
  memory = last 2
  system = "You are {{{{persona.mood}}}}."
}}
population voters = param.n x Voter
workflow {{
  repeat {rounds} as round {{
    ask voters "Round {{{{round}}}}: pick a number." -> pick: int in 0..100
    record mean_pick = mean(voters.pick), answered = count(voters.pick)
  }}
}}
"""
PROVIDERS = {"openai": ("llama-3-8b", "openai_url"), "anthropic": ("claude-haiku-4-5", "url")}


def write(tmp_path: Path, fake: FakeLLM, provider: str, batch: bool, name: str | None = None) -> Path:
    model, url = PROVIDERS[provider]
    path = tmp_path / f"{name or ('batch' if batch else 'plain')}-{provider}.pop"
    path.write_text(SCENARIO.format(n=N, rounds=ROUNDS, provider=provider, name=model, url=getattr(fake, url),
                                    batch=str(batch).lower()))
    return path


def plan_of(path: Path):
    return plan_from_dict(compile_file(str(path)).plan)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("BATCH_KEY", "k")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_batch_run_gives_the_plain_runs_metrics_at_half_the_price(tmp_path, provider):
    with FakeLLM(latency=0.002, batch_latency=0.05) as fake:
        plain = run_plan(plan_of(write(tmp_path, fake, provider, False)), executor="local", run_dir=str(tmp_path / "plain"))
        direct = fake.requests
        batched = run_plan(plan_of(write(tmp_path, fake, provider, True)), executor="local", run_dir=str(tmp_path / "batch"))
        stats = fake.stats()
    assert plain["status"] == batched["status"] == "finished"
    assert metrics(tmp_path / "batch") == metrics(tmp_path / "plain")
    assert direct == ROUNDS * N and fake.requests == direct  # the batch run sent no direct request
    assert stats.batches_created == ROUNDS and stats.batch_items == ROUNDS * N  # one batch per ask and shard
    assert batched["calls"] == plain["calls"] == ROUNDS * N
    assert batched["tokens_in"] == plain["tokens_in"] and batched["tokens_out"] == plain["tokens_out"]
    assert batched["cost_usd"] == pytest.approx(plain["cost_usd"] / 2, rel=1e-9)
    events = [json.loads(x) for x in (tmp_path / "batch" / "events.jsonl").read_text().splitlines()]
    assert "batch_submitted" in json.dumps(events) and "batch_ended" in json.dumps(events)


def test_failed_items_are_retried_and_malformed_replies_reasked_in_later_batches(tmp_path):
    faults = {"fail_first_n": 1, "malformed_first_n": 1}
    with FakeLLM(latency=0.002, batch_latency=0.05, **faults) as fake:
        plain = run_plan(plan_of(write(tmp_path, fake, "openai", False)), executor="local", run_dir=str(tmp_path / "plain"))
    with FakeLLM(latency=0.002, batch_latency=0.05, **faults) as fake:
        batched = run_plan(plan_of(write(tmp_path, fake, "openai", True)), executor="local", run_dir=str(tmp_path / "batch"))
        stats = fake.stats()
    assert metrics(tmp_path / "batch") == metrics(tmp_path / "plain")
    assert batched["errors"] == plain["errors"] == 0
    llm, direct = batched["models"]["m"], plain["models"]["m"]
    assert llm["retries"] == direct["retries"] > 0 and llm["reasks"] == direct["reasks"] > 0
    for count in ("calls", "tokens_in", "tokens_out", "failures"):
        assert llm[count] == direct[count], count
    # each ask: a first batch, then one for the items that errored and one for the re-asks
    assert stats.batches_created > ROUNDS and stats.batch_items == ROUNDS * N + llm["retries"] + llm["reasks"]


def test_a_batch_model_compiles_to_plan_version_1_4_with_the_batch_price(tmp_path):
    with FakeLLM() as fake:
        raw = compile_file(str(write(tmp_path, fake, "anthropic", True))).plan
    assert raw["plan_version"] == "1.4"  # an older runtime would call one by one at twice the plan's price
    assert raw["models"]["m"]["price"] == {"input": 1.0, "output": 5.0}
    assert raw["models"]["m"]["settings"]["batch"] is True


@pytest.mark.slow
def test_a_killed_batch_run_resumes_without_submitting_its_batches_again(tmp_path):
    with FakeLLM(latency=0.002, batch_latency=0.05) as fake:
        run_plan(plan_of(write(tmp_path, fake, "openai", True, "reference")), executor="local",
                 run_dir=str(tmp_path / "reference"))
    with FakeLLM(latency=0.002, batch_latency=1.5) as fake:
        path = write(tmp_path, fake, "openai", True)
        broken = tmp_path / "broken"
        proc = subprocess.Popen([sys.executable, "-m", "populace.cli", "run", str(path), "--executor", "local",
                                 "--quiet", "--run-dir", str(broken)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True, env=dict(os.environ, BATCH_KEY="k"))
        deadline = time.monotonic() + 60
        while fake.stats().batches_created < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.4)  # round 2's batch is submitted and recorded; it ends 1.5 s after it was created
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert fake.stats().batches_created == 2 and len(metrics(broken)) == 1, "killed at the wrong moment"
        summary = resume_run(str(broken), executor="local")
        stats = fake.stats()
    assert summary["status"] == "finished"
    assert metrics(broken) == metrics(tmp_path / "reference")
    assert stats.batches_created == ROUNDS and stats.batch_items == ROUNDS * N  # round 2's batch fetched, not resent
    assert "batch_resumed" in (broken / "events.jsonl").read_text()


def test_batch_for_every_model_from_the_command_line_flag(tmp_path):
    with FakeLLM() as fake:
        raw = compile_file(str(write(tmp_path, fake, "openai", False)), batch=True).plan
    assert raw["models"]["m"]["settings"]["batch"] is False  # the model's own `batch = false` stands
    (tmp_path / "unset.pop").write_text((tmp_path / "plain-openai.pop").read_text().replace("  batch = false\n", ""))
    raw = compile_file(str(tmp_path / "unset.pop"), batch=True).plan
    assert raw["models"]["m"]["settings"]["batch"] is True and raw["models"]["m"]["price"] == {"input": 1.0, "output": 5.0}


def test_a_budget_stops_a_batch_run_before_passing_it_and_resume_finishes_it(tmp_path):
    with FakeLLM(latency=0.002, batch_latency=0.05) as fake:
        path = write(tmp_path, fake, "openai", True)
        full = run_plan(plan_of(path), executor="local", run_dir=str(tmp_path / "full"))
        budget = round(full["cost_usd"] * 0.6, 6)
        cut = run_plan(plan_of(path), executor="local", run_dir=str(tmp_path / "cut"), budget=budget,
                       cache=str(tmp_path / "cut.sqlite"))
        assert cut["status"] == "stopped" and cut["stopped_by"] == "budget" and cut["cost_usd"] <= budget
        done = resume_run(str(tmp_path / "cut"), executor="local", budget=budget * 10, cache=str(tmp_path / "cut.sqlite"))
    assert done["status"] == "finished"
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert done["cost_usd"] == pytest.approx(full["cost_usd"], rel=1e-9)  # nothing paid twice


def test_a_server_without_a_batch_api_fails_the_run_saying_so(tmp_path):
    with FakeLLM() as fake:
        path = write(tmp_path, fake, "openai", True)
        path.write_text(path.read_text().replace(fake.openai_url, fake.url + "/no-batches/v1"))
        summary = run_plan(plan_of(path), executor="local", run_dir=str(tmp_path / "run"))
    assert summary["status"] == "failed"
    assert "the server has no batch API here" in summary["error"] and "remove `batch = true`" in summary["error"]
