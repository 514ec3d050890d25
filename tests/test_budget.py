"""The hard budget: a run stops before the call that would pass it, and a resume with more finishes
it without paying twice. Real openai SDK against the fake server on 127.0.0.1."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.engine.preflight import unsupported
from populace.runtime.engine.resume import ResumeError, resume_run
from populace.runtime.engine.run import run_plan
from populace.runtime.models.budget import BudgetError, Ledger, parse_usd
from populace.runtime.store.events import fold_events

# 40 agents x 4 rounds; at $1,000 per million tokens each call costs about 2-3 cents.
SCENARIO = """
scenario pricey {{
  seed = 5
  param n = 40
}}
model local {{
  provider = openai
  name = "llama-3-8b"
  base_url = "{url}"
  api_key_env = "FAKE_KEY"
  in_flight = 4
  max_tokens = 8
  {price}
}}
persona p {{
  mood ~ choice("calm", "angry", "curious")
}}
agent Voter {{
  persona = p
  model = local
  system = "You are {{{{persona.mood}}}}, agent {{{{self.id}}}}."
}}
population voters = param.n x Voter
workflow {{
  repeat 4 as round {{
    ask voters "Round {{{{round}}}}: pick a number." -> pick: int in 0..100
    record mean_pick = mean(voters.pick), answered = count(voters.pick)
  }}
}}
"""
PRICE = "price = {input: 1000, output: 1000}"


def plan_for(tmp_path: Path, url: str, price: str = PRICE):
    path = tmp_path / "pricey.pop"
    path.write_text(SCENARIO.format(url=url, price=price))
    return plan_from_dict(compile_file(str(path)).plan)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    with FakeLLM(latency=0.01) as server:
        yield server


def test_budget_stops_before_passing_it_and_resume_pays_nothing_twice(tmp_path, fake):
    plan = plan_for(tmp_path, fake.openai_url)
    full = run_plan(plan, executor="local", run_dir=str(tmp_path / "full"))
    calls_full = fake.requests
    assert full["status"] == "finished" and calls_full == 160
    budget = round(full["cost_usd"] * 0.6, 4)  # runs out in round 3

    stopped = run_plan(plan, executor="local", run_dir=str(tmp_path / "cut"), budget=budget)
    assert stopped["status"] == "stopped" and stopped["stopped_by"] == "budget"
    assert stopped["budget_usd"] == budget
    assert stopped["cost_usd"] <= budget  # worst cases are set aside: never past it
    paid_before = fake.requests - calls_full
    assert 0 < paid_before < 160
    assert stopped["calls"] == paid_before  # the cut step's paid calls are counted, not lost
    state = fold_events(str(tmp_path / "cut" / "events.jsonl"))
    assert state.stopped_by == "budget" and state.budget_usd == budget
    reached = [e for e in map(json.loads, (tmp_path / "cut" / "events.jsonl").read_text().splitlines())
               if e["type"] == "budget_reached"]
    assert len(reached) == 1 and reached[0]["spent_usd"] <= budget
    assert len(metrics(tmp_path / "cut")) < 4

    # The same budget again cannot go on: it says what to write.
    with pytest.raises(ResumeError, match=r"--budget \d+usd"):
        resume_run(str(tmp_path / "cut"))

    resumed = resume_run(str(tmp_path / "cut"), budget=full["cost_usd"] * 2)
    assert resumed["status"] == "finished" and "stopped_by" not in resumed
    assert fake.requests - calls_full == 160  # the calls of the cut step came from the cache
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert resumed["calls"] == full["calls"] == 160
    assert resumed["cost_usd"] == pytest.approx(full["cost_usd"])
    assert resumed["steps"] == full["steps"] and resumed["agent_steps"] == full["agent_steps"]


@pytest.mark.slow
@pytest.mark.parametrize("executor, workers", [("ray", None), ("local", 2)])  # local: a manager process holds the ledger
def test_budget_holds_across_shards_in_other_processes(tmp_path, fake, ray_session, executor, workers):
    plan = plan_for(tmp_path, fake.openai_url)
    full = run_plan(plan, executor="local", run_dir=str(tmp_path / "full"))
    budget = round(full["cost_usd"] * 0.45, 4)
    stopped = run_plan(plan, executor=executor, shards=3, run_dir=str(tmp_path / "cut"), budget=budget,
                       workers=workers)
    assert stopped.get("workers") == workers
    assert stopped["status"] == "stopped" and stopped["stopped_by"] == "budget"
    assert stopped["cost_usd"] <= budget
    # Shards hand back what they do not use: the run stops near the budget, not at a third of it.
    assert stopped["cost_usd"] > budget * 0.8
    resumed = resume_run(str(tmp_path / "cut"), budget=full["cost_usd"] * 2, workers=workers)
    assert resumed["status"] == "finished"
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert resumed["cost_usd"] == pytest.approx(full["cost_usd"])


def test_a_budget_needs_every_paid_model_priced(tmp_path, fake):
    plan = plan_for(tmp_path, fake.openai_url, price="")
    problems = unsupported(plan, budget=1.0)
    assert any("give model `local` price = {input: USD, output: USD}" in p for p in problems)
    assert not any("price" in p for p in unsupported(plan))


@pytest.mark.parametrize("text, dollars", [("25usd", 25.0), ("25 USD", 25.0), ("$25", 25.0), ("0.5", 0.5),
                                           (".25usd", 0.25), (12, 12.0)])
def test_budget_amounts(text, dollars):
    assert parse_usd(text) == dollars


@pytest.mark.parametrize("text", ["25eur", "-3", "0", "lots", "25 usd usd"])
def test_budget_amounts_refused(text):
    with pytest.raises(BudgetError):
        parse_usd(text)


def test_ledger_keeps_what_shards_hold_apart():
    ledger = Ledger(1.0)
    assert ledger.draw("a", 0.6, 0.1) == (0.6, False)
    assert ledger.draw("b", 0.6, 0.1) == (0.4, True)  # only what is free
    assert ledger.draw("b", 0.6, 0.1) == (0.0, True)  # nothing free, but a still holds some
    ledger.settle("a", 0.2, 0.4)  # a spent 0.2 and gave 0.4 back
    assert ledger.stats() == {"limit": 1.0, "spent": 0.2, "held": pytest.approx(0.4)}
    assert ledger.draw("a", 0.5, 0.5) == (0.0, True)  # 0.4 free is less than the 0.5 a call may cost
    ledger.reset("b")
    assert ledger.draw("a", 0.5, 0.5) == (0.5, False)


@pytest.mark.asyncio
async def test_monitor_shows_spend_against_the_budget(tmp_path, fake):
    from nicegui.testing.user_simulation import user_simulation

    from populace.runtime.monitor.data import MonitorState
    from populace.runtime.monitor.page import root_for

    plan = plan_for(tmp_path, fake.openai_url)
    stopped = run_plan(plan, executor="local", run_dir=str(tmp_path / "cut"), budget=0.5)
    assert stopped["stopped_by"] == "budget"
    monitor = MonitorState(str(tmp_path / "cut"))
    monitor.poll()
    assert monitor.state.stopped_by == "budget" and monitor.state.budget_usd == 0.5
    assert monitor.cost() == pytest.approx(stopped["cost_usd"])
    async with user_simulation(root=root_for(monitor)) as user:
        await user.open("/")
        [status] = user.find(marker="status").elements
        assert status.text == "stopped: budget"
        [cost] = user.find(marker="stat-cost").elements
        assert cost.text == f"${stopped['cost_usd']:,.4f} of $0.50 budget ({stopped['cost_usd'] / 0.5:.0%})"
        [stop] = user.find(marker="stop").elements
        assert not stop.enabled


def test_the_scenario_can_set_its_budget(tmp_path, fake):
    from populace.dsl.diagnostics import DiagnosticError

    text = SCENARIO.format(url=fake.openai_url, price=PRICE).replace("  seed = 5\n", "  seed = 5\n  budget = 0.5usd\n")
    path = tmp_path / "budgeted.pop"
    path.write_text(text)
    raw = compile_file(str(path)).plan
    assert raw["scenario"]["settings"]["budget"] == 0.5 and raw["plan_version"] == "1.3"
    stopped = run_plan(plan_from_dict(raw), executor="local", run_dir=str(tmp_path / "run"))
    assert stopped["stopped_by"] == "budget" and stopped["budget_usd"] == 0.5 and stopped["cost_usd"] <= 0.5
    path.write_text(text.replace("budget = 0.5usd", 'budget = "lots"'))
    with pytest.raises(DiagnosticError) as refused:
        compile_file(str(path))
    assert [d.code for d in refused.value.diagnostics] == ["E1041"]
