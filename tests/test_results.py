"""Results are data, and a run's status never hides a failure (issue 16).

Real runs through the CLI and the Python API: failed answers against the fake Anthropic server and
a policy that fails for some agents; the Parquet outputs read back as datasets with their
partition columns and declared types; a stopped local run resumed locally.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

import populace
from fake_llm import FakeLLM
from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"

POLICY_SCENARIO = '''
scenario failing {{
  seed = 3{setting}
  param n = 400
}}
model rules {{
  provider = python
  function = "{function}"
}}
agent A {{ model = rules }}
population people = param.n x A
workflow {{
  repeat 2 as round {{
    ask people "Pick a number." -> x: int in 0..100
    record round, mean_x = mean(people.x), answered = count(people.x)
  }}
}}
'''


def write_policy(folder: Path, module: str, body: str) -> None:
    """A policy module next to the scenario (a name of its own: a module imported once stays imported)."""
    (folder / f"{module}.py").write_text(body)


def scenario(tmp_path: Path, function: str, setting: str = "") -> Path:
    path = tmp_path / "failing.pop"
    path.write_text(POLICY_SCENARIO.format(function=function, setting=setting))
    return path


# ------------------------------------------------------------------ honest status
def test_a_run_whose_calls_all_fail_exits_non_zero_with_the_providers_message(tmp_path, monkeypatch, capsys):
    text = FLAGSHIP.read_text().replace("model   = level_k", "model   = claude")
    path = tmp_path / "claude.pop"
    path.write_text(text)
    with FakeLLM(fail_rate=1.0, fail_status=400) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
        code = main(["run", str(path), "--executor", "local", "--quiet", "--set", "players=30",
                     "--run-dir", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["errors"] == 30 == summary["answers"]
    # the provider's own words reach the user: the status, its error type and the agent
    assert "30 of 30 answers failed" in out and "400" in out and "agent 0" in out
    failures = json.loads((tmp_path / "run" / "failures.json").read_text())
    [step] = failures["steps"]
    ask_line = next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith("ask players"))
    assert step["failed"] == 30 and step["errors"][0]["where"].endswith(f":{ask_line}:5")
    assert "invalid_request_error" in step["errors"][0]["error"] or "400" in step["errors"][0]["error"]


def test_three_percent_failures_finish_and_say_how_many(tmp_path, capsys):
    write_policy(tmp_path, "some_fail_policy", "def some_fail(agent):\n"
                           "    if agent['id'] % 100 < 3:\n"
                           "        raise ValueError(f'no answer for {agent[\"id\"]}')\n"
                           "    return agent['id'] % 50\n")
    path = scenario(tmp_path, "some_fail_policy:some_fail")
    assert main(["run", str(path), "--executor", "local", "--quiet", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["errors"] == 24 and summary["answers"] == 800
    assert "24 of 800 answers (3.0%)" in out and "failures.json" in out
    failures = json.loads((tmp_path / "run" / "failures.json").read_text())
    assert [s["failed"] for s in failures["steps"]] == [12, 12] and failures["max_failed"] == 0.05
    assert failures["steps"][0]["errors"][0] == {"error": "ValueError: no answer for 0", "agent": 0,
                                                 "step": "step:ask.x", "iteration": "[round=1]",
                                                 "where": f"{path}:14:5"}
    # the same run with the scenario's own threshold below 3% fails at the first ask
    strict = scenario(tmp_path, "some_fail_policy:some_fail", "\n  max_failed = 1%")
    assert main(["run", str(strict), "--executor", "local", "--quiet", "--run-dir", str(tmp_path / "strict")]) == 1
    assert "12 of 400 answers failed (3.0%, more than max_failed 1%)" in capsys.readouterr().out
    # and --max-failed on the command line wins over the scenario
    assert main(["run", str(strict), "--executor", "local", "--quiet", "--max-failed", "5%",
                 "--run-dir", str(tmp_path / "lenient")]) == 0


def test_resume_keeps_the_executor_the_run_started_with(tmp_path, capsys):
    """A local run stopped after its first ask resumes locally (`resume` without --executor)."""
    stop_file = tmp_path / "run"
    write_policy(tmp_path, "stop_policy", "from populace.runtime.store.rundir import request_control\n"
                           f"RUN = {str(stop_file)!r}\n"
                           "import os\n"
                           "def stops(agent):\n"
                           "    once = os.path.join(RUN, 'stopped-once')\n"
                           "    if agent['id'] == 0 and agent['variables'].get('round') == 1 and not os.path.exists(once):\n"
                           "        open(once, 'w').close()\n"
                           "        request_control(RUN, 'stop')  # read between steps: the run stops after this ask\n"
                           "    return 7\n")
    path = scenario(tmp_path, "stop_policy:stops")
    assert main(["run", str(path), "--executor", "local", "--quiet", "--run-dir", str(stop_file)]) == 130
    capsys.readouterr()
    assert main(["resume", str(stop_file), "--quiet"]) == 0
    events = [json.loads(x) for x in (stop_file / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["type"] == "run_started"]
    assert [e["executor"] for e in starts] == ["local", "local"] and starts[1]["resumed_from"] >= 1
    records = pd.read_parquet(stop_file / "records" / "metrics.parquet")
    assert records["round"].tolist() == [1, 2] and records["answered"].tolist() == [400, 400]


def test_a_missing_edge_list_is_a_diagnostic_on_resume_not_a_traceback(tmp_path, capsys):
    (tmp_path / "edges.csv").write_text("0,1\n1,2\n")
    path = tmp_path / "net.pop"
    path.write_text('''
scenario net { seed = 1 }
model m { provider = mock }
agent A { model = m }
population people = 3 x A
environment links : network(people, edges = "edges.csv")
workflow {
  repeat 2 as round {
    ask people "Degree {{ links.degree() }}" -> x: int in 0..9
  }
}
''')
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--executor", "local", "--quiet", "--run-dir", str(run_dir)]) == 0
    (tmp_path / "edges.csv").unlink()
    capsys.readouterr()
    (run_dir / "summary.json").unlink()  # as if its driver had died
    assert main(["resume", str(run_dir), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "edge list edges.csv is not at" in err and "Traceback" not in err


# ------------------------------------------------------------------ results as data
@pytest.fixture(scope="module")
def typed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("typed")
    path = tmp / "typed.pop"
    path.write_text('''
scenario typed { seed = 11 }
model m { provider = mock }
agent A { model = m }
population people = 60 x A
workflow {
  repeat 3 as round {
    for topic in ["tax", "trade"] {
      ask people "About {{ topic }}?" -> view: { stance: enum("pro", "con", "unsure"), strength: int in 1..5, why: str }
      ask people "Vote on {{ topic }}" -> vote: enum("yes", "no")
    }
    record round, yes = share(people.vote == "yes"), counts = histogram(people.view.strength, bins = 5)
  }
}
''')
    return populace.run(str(path), run_dir=str(tmp / "run"))


def test_every_answer_file_read_as_a_dataset_has_its_partition_columns(typed_run):
    views = ds.dataset(typed_run.path("asks", "ask.view"), partitioning="hive")
    assert {"round", "topic"} <= set(views.schema.names)
    table = pd.read_parquet(typed_run.path("asks", "ask.view"))
    assert len(table) == 60 * 3 * 2
    assert sorted(table["topic"].unique()) == ["tax", "trade"] and sorted(table["round"].astype(int).unique()) == [1, 2, 3]
    # the whole asks folder also reads as one dataset per ask
    assert set(typed_run.asks) == {"view", "vote"} and len(typed_run.asks["vote"]) == 360


def test_record_answers_are_structs_and_enums_are_categorical(typed_run):
    import pyarrow as pa

    schema = ds.dataset(typed_run.path("asks", "ask.view"), partitioning="hive").schema
    view = schema.field("value").type
    assert pa.types.is_struct(view)
    assert {view.field(i).name: str(view.field(i).type) for i in range(view.num_fields)} == {
        "stance": "dictionary<values=string, indices=int32, ordered=0>", "strength": "int64", "why": "string"}
    vote = ds.dataset(typed_run.path("asks", "ask.vote"), partitioning="hive").schema.field("value").type
    assert pa.types.is_dictionary(vote)
    votes = typed_run.asks["vote"]["value"]
    assert isinstance(votes.dtype, pd.CategoricalDtype) and list(votes.cat.categories) == ["yes", "no"]
    first = typed_run.asks["view"]["value"].iloc[0]
    assert set(first) == {"stance", "strength", "why"} and first["stance"] in ("pro", "con", "unsure")


def test_records_are_typed_tables_and_histograms_have_numeric_bins(typed_run):
    metrics = typed_run.metrics
    assert metrics["round"].tolist() == [1, 2, 3] and metrics["yes"].dtype == float
    assert "counts" not in metrics.columns  # a histogram is a table of its own
    bins = typed_run.records["metrics.counts"]
    assert list(bins.columns) == ["round", "bin_low", "bin_high", "count"]
    assert bins["bin_low"].dtype == float and bins["bin_high"].dtype == float
    assert bins.groupby("round")["count"].sum().tolist() == [60, 60, 60]
    assert typed_run.summary["tables"] == ["records/metrics.counts.parquet", "records/metrics.parquet"]


def test_the_python_api_runs_like_the_cli_and_refuses_bad_scenarios(tmp_path):
    run = populace.run(str(FLAGSHIP), params={"players": 300, "rounds": 2}, run_dir=str(tmp_path / "api"))
    assert run.status == "finished" and run.metrics["round"].tolist() == [1, 2]
    assert len(run.asks["guess"]) == 600 and len(run.personas) == 300
    again = populace.load(str(tmp_path / "api"))
    pd.testing.assert_frame_equal(again.metrics, run.metrics)
    assert main(["run", str(FLAGSHIP), "--executor", "local", "--quiet", "--set", "players=300", "--set", "rounds=2",
                 "--run-dir", str(tmp_path / "cli")]) == 0
    pd.testing.assert_frame_equal(populace.load(str(tmp_path / "cli")).metrics, run.metrics)
    with pytest.raises(populace.ScenarioError, match=r"no param `player`"):
        populace.run(str(FLAGSHIP), params={"player": 3})


def test_sweep_puts_every_set_param_in_its_table(tmp_path, capsys):
    assert main(["sweep", str(FLAGSHIP), "--set", "players=100,200", "--set", "rounds=2", "--executor", "local",
                 "--sweep-dir", str(tmp_path / "sweep")]) == 0
    table = pd.read_parquet(tmp_path / "sweep" / "sweep.parquet")
    assert table["players"].tolist() == [100, 100, 200, 200] and table["rounds"].tolist() == [2, 2, 2, 2]
    assert table["round"].tolist() == [1, 2, 1, 2]


# ------------------------------------------------------------------ the prompts an agent was sent
def test_populace_prompt_prints_what_the_server_received(tmp_path, monkeypatch, capsys):
    """Against the fake Anthropic server: --save-prompts keeps, and `populace prompt` prints (from the
    saved prompts or by replaying the run from its cache), the request the server got, byte for byte."""
    bodies = []

    def reply(prompt, body):
        bodies.append(body)
        return str(len(prompt) % 90)

    path = tmp_path / "claude.pop"
    path.write_text(FLAGSHIP.read_text().replace("model   = level_k", "model   = claude"))
    with FakeLLM(reply=reply) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
        assert main(["run", str(path), "--executor", "local", "--quiet", "--set", "players=20", "--set", "rounds=2",
                     "--save-prompts", "100%", "--run-dir", str(tmp_path / "run")]) == 0
    saved = pd.read_parquet(tmp_path / "run" / "prompts" / "ask.guess")
    row = saved[(saved["agent"] == 7) & (saved["round"].astype(int) == 2)].iloc[0]
    def text(content):
        return content if isinstance(content, str) else "".join(block["text"] for block in content)

    sent = [b for b in bodies if text(b["system"]) == row["system"]
            and [(m["role"], text(m["content"])) for m in b["messages"]] == [(m["role"], m["content"]) for m in row["messages"]]]
    assert len(sent) >= 1 and len(row["messages"]) == 3  # the server got this request: round 1, its answer, round 2
    capsys.readouterr()
    assert main(["prompt", str(tmp_path / "run"), "--agent", "7", "--step", "2"]) == 0
    from_saved = capsys.readouterr().out
    assert from_saved.startswith("agent 7 at ask.guess[round=2], model claude\n--- system ---\n" + row["system"])
    assert from_saved.endswith(row["messages"][-1]["content"] + "\n")
    # without saved prompts the run is replayed from its cache: the same text, and no call is made
    import shutil

    shutil.rmtree(tmp_path / "run" / "prompts")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens: a call would fail
    assert main(["prompt", str(tmp_path / "run"), "--agent", "7", "--step", "ask.guess[round=2]"]) == 0
    assert capsys.readouterr().out == from_saved
    assert main(["prompt", str(tmp_path / "run"), "--agent", "7", "--step", "9"]) == 1
    assert "the run executed 2 ask(s)" in capsys.readouterr().err
