"""manifest.json and `populace replay`: a finished LLM run is rerun from its cache with zero requests to
the (fake) server, and its metrics and records are byte-identical; a changed output is caught.
Real openai SDK against tests/fake_llm.py; the real CLI entry point."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from populace.cli.main import main

SECRET = "sk-test-not-to-be-written-9f3a"
SCENARIO = """
scenario replayed {{
  seed = 9
  param n = 30
}}
model local {{
  provider = openai
  name = "llama-3-8b"
  base_url = "{url}"
  api_key_env = "REPLAY_KEY"
  in_flight = 8
  max_tokens = 8
  temperature = 0.7
  price = {{input: 1, output: 2}}
}}
persona p {{
  mood ~ choice("calm", "angry", "curious")
}}
agent Voter {{
  persona = p
  model = local
  memory = last 2
  system = "You are {{{{persona.mood}}}}."
}}
population voters = param.n x Voter
workflow {{
  repeat 3 as round {{
    ask voters "Round {{{{round}}}}: pick a number." -> pick: int in 0..100
    record mean_pick = mean(voters.pick), answered = count(voters.pick)
  }}
}}
"""


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("REPLAY_KEY", SECRET)
    with FakeLLM(latency=0.005) as server:
        yield server


@pytest.fixture
def finished(tmp_path, fake):
    scenario = tmp_path / "replayed.pop"
    scenario.write_text(SCENARIO.format(url=fake.openai_url))
    run = tmp_path / "run"
    assert main(["run", str(scenario), "--executor", "local", "--run-dir", str(run), "--quiet"]) == 0
    assert fake.requests == 90
    return run


def test_the_manifest_says_what_the_run_was_made_of_and_holds_no_key(finished):
    manifest = json.loads((finished / "manifest.json").read_text())
    assert manifest["plan_sha256"] == hashlib.sha256((finished / "plan.json").read_bytes()).hexdigest()
    assert manifest["scenario"]["sources"] and manifest["seed"] == 9 and manifest["params"] == {"n": 30}
    assert manifest["models"]["local"]["settings"]["temperature"] == 0.7
    assert manifest["models"]["local"]["price"] == {"input": 1.0, "output": 2.0}
    assert manifest["packages"]["openai"] and manifest["packages"]["pyarrow"] and manifest["python"]
    result = manifest["result"]
    assert result["status"] == "finished" and result["calls"] == 90 and result["cache_hits"] == {"local": 0}
    assert result["metrics_sha256"] == hashlib.sha256((finished / "metrics.jsonl").read_bytes()).hexdigest()
    assert "metrics.parquet" in result["records"]
    for path in finished.rglob("*"):  # the key reaches no file of the run
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_replay_makes_no_request_and_matches_byte_for_byte(finished, fake, capsys, monkeypatch):
    monkeypatch.delenv("REPLAY_KEY")  # a replay needs no key: it sends nothing
    before = fake.requests
    assert main(["replay", str(finished), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert fake.requests == before
    assert "90 LLM answers from the cache, 0 requests to LLM providers" in out
    assert "metrics.jsonl: identical" in out and "records/metrics.parquet: identical" in out
    assert "replay matches the run byte for byte" in out
    replay = Path(str(finished) + "-replay")
    assert (replay / "metrics.jsonl").read_bytes() == (finished / "metrics.jsonl").read_bytes()
    assert json.loads((replay / "manifest.json").read_text())["result"]["cache_hits"] == {"local": 90}


def test_replay_catches_a_changed_output(finished, capsys):
    lines = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"answered": 30', '"answered": 29')
    (finished / "metrics.jsonl").write_text("".join(lines))
    assert main(["replay", str(finished), "--quiet", "--run-dir", str(finished.parent / "again")]) == 1
    out = capsys.readouterr().out
    assert "metrics.jsonl: DIFFERS (first at line 2)" in out and "replay does NOT match the run" in out


def test_replay_without_the_cache_refuses_rather_than_calling(finished, fake, capsys):
    os.remove(finished / "cache.sqlite")
    before = fake.requests
    assert main(["replay", str(finished), "--quiet"]) == 1
    assert "there is no response cache" in capsys.readouterr().err
    assert fake.requests == before


def test_replay_of_an_unfinished_run_is_refused_with_what_to_do(finished, capsys):
    summary = json.loads((finished / "summary.json").read_text())
    (finished / "summary.json").write_text(json.dumps(dict(summary, status="stopped")))
    assert main(["replay", str(finished), "--quiet"]) == 1
    assert "replay reruns a finished run (`populace resume`" in capsys.readouterr().err


def test_resume_uses_the_cache_the_run_was_started_with(tmp_path, fake):
    scenario = tmp_path / "replayed.pop"
    scenario.write_text(SCENARIO.format(url=fake.openai_url))
    run, shared = tmp_path / "cut", tmp_path / "elsewhere.sqlite"
    code = main(["run", str(scenario), "--executor", "local", "--run-dir", str(run), "--quiet",
                 "--cache", str(shared), "--budget", "0.0015"])
    assert code == 130 and json.loads((run / "summary.json").read_text())["stopped_by"] == "budget"
    assert main(["resume", str(run), "--budget", "1usd", "--quiet"]) == 0  # no --cache: the manifest names it
    assert fake.requests == 90  # the calls made before the stop were not paid again
    assert not (run / "cache.sqlite").exists()
