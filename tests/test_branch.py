"""`populace branch` and `populace diff`: a branch starts from the parent's checkpoint with a param
changed, pays only for the calls after the branch point, and keeps the parent's history; what cannot
be a branch is refused with what to do. Real openai SDK against tests/fake_llm.py; the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from populace.cli.main import main

N, ROUNDS = 20, 4
SCENARIO = """
scenario taxed {{
  seed = 3
  param n = {n}
  param tax = 0.1
  param start = 5
}}
model local {{
  provider = openai
  name = "llama-3-8b"
  base_url = "{url}"
  api_key_env = "BRANCH_KEY"
  max_tokens = 8
  price = {{input: 1, output: 2}}
}}
agent Citizen {{
  model = local
  memory = last 2
  system = "You pay taxes."
}}
population citizens = param.n x Citizen
environment town {{
  fund: float = param.start
}}
workflow {{
  repeat {rounds} as round {{
    ask citizens "Round {{{{round}}}}. The tax is {{{{param.tax}}}}. How much do you work, 0 to 100?" -> work: int in 0..100
    record round, tax = param.tax, work = mean(citizens.work)
  }}
}}
"""


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("BRANCH_KEY", "k")
    with FakeLLM(latency=0.002) as server:
        yield server


@pytest.fixture
def parent(tmp_path, fake):
    scenario = tmp_path / "taxed.pop"
    scenario.write_text(SCENARIO.format(n=N, rounds=ROUNDS, url=fake.openai_url))
    run = tmp_path / "parent"
    assert main(["run", str(scenario), "--executor", "local", "--run-dir", str(run), "--quiet",
                 "--keep-checkpoints", "all"]) == 0
    assert fake.requests == N * ROUNDS
    return run


def test_a_branch_pays_only_for_the_calls_after_the_branch_point(parent, fake, tmp_path, capsys):
    before = fake.requests
    branch = tmp_path / "branch"
    assert main(["branch", str(parent), "--at", "round=3", "--set", "param.tax=0.3", "--run-dir", str(branch),
                 "--quiet"]) == 0
    assert fake.requests - before == N * (ROUNDS - 2)  # rounds 3 and 4; rounds 1 and 2 are the parent's
    out = capsys.readouterr().out
    assert f"{N * (ROUNDS - 2):,} calls after the branch point, {N * 2:,} before it were the parent's" in out
    a, b = metrics(parent), metrics(branch)
    assert b[:2] == a[:2]  # the shared history
    assert [r["tax"] for r in b] == [0.1, 0.1, 0.3, 0.3] and [r["round"] for r in b] == [1, 2, 3, 4]
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["params"]["tax"] == 0.3
    assert summary["calls"] == N * ROUNDS  # the branch as a whole run: the parent's part and its own
    manifest = json.loads((branch / "manifest.json").read_text())
    assert manifest["branched_from"]["at"] == "round=3" and manifest["branched_from"]["set"] == ["param.tax=0.3"]
    assert manifest["result"]["status"] == "finished"
    for r in (1, 2, 3, 4):  # every round's answers: copied from the parent, then the branch's own
        assert (branch / "asks" / "ask.work" / f"round={r}" / "part-0.parquet").exists()
    import populace

    assert len(populace.load(str(branch)).metrics) == ROUNDS

    capsys.readouterr()
    assert main(["diff", str(parent), str(branch), "--csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "step,record,value,a,b,b_minus_a"
    assert "record,#3,tax,0.1,0.3,0.2" in rows and "record,#4,tax,0.1,0.3,0.2" in rows
    assert not any(",#1," in r or ",#2," in r for r in rows)  # the shared rounds agree


def test_a_pruned_checkpoint_is_refused_with_how_to_keep_them(tmp_path, fake, capsys):
    scenario = tmp_path / "taxed.pop"
    scenario.write_text(SCENARIO.format(n=N, rounds=ROUNDS, url=fake.openai_url))
    run = tmp_path / "kept2"
    assert main(["run", str(scenario), "--executor", "local", "--run-dir", str(run), "--quiet"]) == 0
    before = fake.requests
    assert main(["branch", str(run), "--at", "round=1", "--set", "tax=0.3"]) == 1
    err = capsys.readouterr().err
    assert "no longer has its checkpoint at [round=1]" in err and "--keep-checkpoints all" in err
    assert fake.requests == before
    assert main(["branch", str(run), "--at", "round=9", "--set", "tax=0.3"]) == 1
    assert "no checkpoint in an iteration with round=9" in capsys.readouterr().err


def test_what_cannot_be_a_branch_is_refused(parent, tmp_path, capsys):
    assert main(["branch", str(parent), "--at", "round=2", "--set", "n=30"]) == 1
    assert "population `citizens` would have 30 agents instead of 20" in capsys.readouterr().err
    assert main(["branch", str(parent), "--at", "round=2", "--set", "nope=1"]) == 1
    err = capsys.readouterr().err
    assert "no param `nope`" in err and not err.startswith("error: error")
    scenario = tmp_path / "taxed.pop"
    scenario.write_text(scenario.read_text().replace("You pay taxes.", "You pay taxes!"))
    assert main(["branch", str(parent), "--at", "round=2", "--set", "tax=0.3"]) == 1
    assert "changed since the run" in capsys.readouterr().err


def test_a_param_that_shapes_an_environments_start_is_refused(parent, capsys):
    assert main(["branch", str(parent), "--at", "round=2", "--set", "start=9"]) == 1
    err = capsys.readouterr().err
    assert "change environment `town`" in err and "new run instead" in err


def test_a_branch_is_not_replayed_as_if_it_were_a_run_from_the_start(parent, tmp_path, capsys):
    branch = tmp_path / "b"
    assert main(["branch", str(parent), "--at", "round=3", "--set", "tax=0.3", "--run-dir", str(branch), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["replay", str(branch), "--quiet"]) == 1
    assert "is a branch of" in capsys.readouterr().err
