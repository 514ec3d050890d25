"""End-to-end runs: the local and the Ray executor give identical results, whatever the shards."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.cli.main import main
from populace.runtime.engine.run import run_plan

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"
CONSTRUCTS = ROOT / "tests" / "fixtures" / "run" / "constructs.pop"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # policies_for_tests, for the local executor


def run(path, tmp_path, name, executor="local", shards=None, overrides=()):
    plan = plan_from_dict(compile_file(str(path), list(overrides)).plan)
    run_dir = tmp_path / name
    summary = run_plan(plan, executor=executor, shards=shards, run_dir=str(run_dir))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, run_dir


def asks(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): pd.read_parquet(p) for p in sorted((run_dir / "asks").rglob("*.parquet"))}


@pytest.fixture(scope="module")
def flagship_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("flagship")
    args = dict(overrides=["players=3000"])
    return {
        "local-1": run(FLAGSHIP, tmp, "local-1", "local", 1, **args),
        "local-3": run(FLAGSHIP, tmp, "local-3", "local", 3, **args),
        "ray-2": run(FLAGSHIP, tmp, "ray-2", "ray", 2, **args),
    }


def test_flagship_average_falls_round_by_round(flagship_runs):
    summary, metrics, _ = flagship_runs["local-1"]
    assert summary["status"] == "finished"
    means = [m["mean_guess"] for m in metrics]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert means[0] > means[1] > means[2], means
    for m in metrics:
        assert m["target"] == pytest.approx(m["mean_guess"] * 2 / 3)
        assert sum(m["guesses"]["counts"]) == 3000


@pytest.mark.slow
def test_executors_and_shard_counts_agree(flagship_runs):
    base_summary, base_metrics, base_dir = flagship_runs["local-1"]
    base_asks = asks(base_dir)
    base_personas = pd.read_parquet(base_dir / "personas.parquet")
    assert len(base_asks) == 3 and all(len(t) == 3000 for t in base_asks.values())
    for name in ("local-3", "ray-2"):
        summary, metrics, run_dir = flagship_runs[name]
        assert metrics == base_metrics, name
        other = asks(run_dir)
        assert other.keys() == base_asks.keys()
        for key in base_asks:
            pd.testing.assert_frame_equal(other[key], base_asks[key])
        pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "personas.parquet"), base_personas)
    assert flagship_runs["ray-2"][0]["shards"] == {"players": 2}
    assert flagship_runs["ray-2"][0]["executor"] == "ray"


def test_run_directory_loads_in_one_line(flagship_runs):
    _, _, run_dir = flagship_runs["local-1"]
    personas = pd.read_parquet(run_dir / "personas.parquet")
    assert list(personas.columns) == ["agent", "age", "gender", "major", "curiosity", "year", "background"]
    assert personas["age"].between(18, 26).all() and personas["year"].equals((personas["age"] - 17).clip(upper=5))
    # reuse per (age, major): one background per combination
    assert personas.groupby(["age", "major"])["background"].nunique().max() == 1
    round1 = pd.read_parquet(run_dir / "asks" / "ask.guess" / "round=1" / "part-0.parquet")
    assert list(round1.columns) == ["agent", "kind", "prompt_hash", "reply", "value", "error"]
    assert set(round1["kind"]) == {"Player"}
    assert round1["agent"].tolist() == list(range(3000))
    assert round1["error"].isna().all() and round1["value"].between(0, 100).all()
    assert pd.read_json(run_dir / "metrics.jsonl", lines=True)["round"].tolist() == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["agent_steps"] == 9000 and summary["calls"] == 9000
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0]["type"] == "run_started" and events[-1] == dict(events[-1], type="run_finished", status="finished")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["plan_version"] == "1.0"


def test_same_seed_same_results_other_seed_differs(tmp_path):
    _, a, _ = run(FLAGSHIP, tmp_path, "a", overrides=["players=500"])
    _, b, _ = run(FLAGSHIP, tmp_path, "b", overrides=["players=500"])
    assert a == b
    plan = compile_file(str(FLAGSHIP), ["players=500"]).plan
    plan["scenario"]["seed"] = 43
    from populace.compiler.plan import plan_hash

    plan["plan_hash"] = plan_hash(plan)
    summary = run_plan(plan_from_dict(plan), executor="local", run_dir=str(tmp_path / "c"))
    c = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert summary["seed"] == 43 and c != a


@pytest.fixture(scope="module")
def constructs_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("constructs")
    return {"local": run(CONSTRUCTS, tmp, "local", "local", 1), "local-4": run(CONSTRUCTS, tmp, "local-4", "local", 4),
            "ray": run(CONSTRUCTS, tmp, "ray", "ray", 3)}


def test_every_construct_gives_checked_results(constructs_runs):
    summary, metrics, run_dir = constructs_runs["local"]
    personas = pd.read_parquet(run_dir / "personas.parquet")
    loop = [m for m in metrics if m["step"] == "step:record"]
    after = [m for m in metrics if m["step"] == "step:record#2"]
    # break when round >= 4 ends the loop after 4 of 5 rounds; `stop when` skips the last record.
    assert [m["round"] for m in loop] == [1, 2, 3, 4]
    assert not any("never" in m for m in metrics)
    # `threshold = threshold + 1` inside the loop outlives it (also through the break).
    assert [m["threshold"] for m in loop] == [51, 52, 53, 54]
    assert [m["threshold"] for m in after] == [54, 54] and [m["t"] for m in after] == [1, 2]
    for m in loop:  # if / else if / else on the board label
        want = "majority yes" if m["yes"] > 0.5 else "close" if m["yes"] > 0.4 else "majority no"
        assert m["label"] == want
    # where persona.age < 50: only those agents answer; Elders (ids 150-199, python policy) fail on ids ending in 7.
    young = personas["age"] < 50
    failing = young & (personas["agent"] >= 150) & (personas["agent"] % 10 == 7)
    for m in loop:
        assert m["answered"] == int(young.sum() - failing.sum())
    pick1 = pd.read_parquet(run_dir / "asks" / "ask.pick" / "round=1" / "part-0.parquet")
    assert sorted(pick1["agent"]) == sorted(personas.loc[young, "agent"])
    errors = pick1.dropna(subset=["error"])
    assert set(errors["agent"]) == set(personas.loc[failing, "agent"])
    assert errors["value"].isna().all() and errors["error"].str.contains("policy refused").all()
    all_asks = asks(run_dir)
    assert summary["errors"] == sum(int(t["error"].notna().sum()) for t in all_asks.values())
    # The Elders' policy answers a number where a bool is asked: every Elder's `ok` is an error.
    ok1 = all_asks["asks/ask.ok/t=1/part-0.parquet"]
    assert set(ok1.dropna(subset=["error"])["agent"]) == set(range(150, 200))
    assert ok1["error"].dropna().str.fullmatch(r"\d+ is not a valid bool|RuntimeError: policy refused agent \d+7").all()
    # voters.score += 1 where vote == "yes", summed over the 4 rounds
    yes_total = sum((pd.read_parquet(run_dir / "asks" / "ask.vote" / f"round={r}" / "part-0.parquet")["value"] == "yes").sum()
                    for r in range(1, 5))
    assert after[0]["scores"] == yes_total
    assert isinstance(after[0]["max_score"], int) and 1 <= after[0]["max_score"] <= 4
    # Elders' python policy sees memory: age + number of memory entries (broadcast + earlier asks)
    elder_pick = pick1[(pick1["agent"] >= 150) & pick1["error"].isna()].merge(personas, on="agent")
    assert (elder_pick["value"] == elder_pick["age"] + 1).all()  # memory holds the broadcast only


@pytest.mark.slow
def test_constructs_agree_across_executors(constructs_runs):
    base = constructs_runs["local"]
    for name in ("local-4", "ray"):
        assert constructs_runs[name][1] == base[1], name
        a, b = asks(base[2]), asks(constructs_runs[name][2])
        for key in a:
            pd.testing.assert_frame_equal(a[key], b[key])


def test_missing_api_key_is_refused_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    text = FLAGSHIP.read_text().replace("model   = level_k", "model   = claude")
    path = tmp_path / "real.pop"
    path.write_text(text)
    assert main(["run", str(path), "--executor", "local", "--run-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "ANTHROPIC_API_KEY" in err and "not set" in err
    assert not (tmp_path / "r").exists()


def test_cli_run_writes_summary(tmp_path, capsys):
    assert main(["run", str(FLAGSHIP), "--set", "players=100", "--executor", "local", "--quiet",
                 "--run-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and str(tmp_path / "r") in out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["agents"] == 100
    # files written atomically get ordinary permissions (the umask's), not a temporary file's 0600
    mask = os.umask(0)
    os.umask(mask)
    for name in ("summary.json", "plan.json", "personas.parquet", "asks/ask.guess/round=1/part-0.parquet"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_division_by_zero_fails_the_run_with_the_scenario_line(tmp_path):
    text = FLAGSHIP.read_text().replace("let target = mean(players.guess) * game.ratio",
                                        "let target = mean(players.guess) / (round - 1)")
    path = tmp_path / "zero.pop"
    path.write_text(text)
    summary, metrics, run_dir = run(path, tmp_path, "z", overrides=["players=50"])
    assert summary["status"] == "failed"
    failed = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if '"run_failed"' in x]
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "let target" in l)
    assert f"zero.pop:{line}:" in failed[0]["error"] and "division by zero" in failed[0]["error"]


def test_memory_keeps_the_last_entries(tmp_path):
    from populace.runtime.engine.shard import Shard

    from populace.compiler.plan import steps

    plan = plan_from_dict(compile_file(str(CONSTRUCTS)).plan)
    shard = Shard(plan, "voters", 0, 0, 10)
    shard.broadcast("one")
    span = steps.Span("x.pop", 1, 1, 1, 1)
    target = steps.TellTarget(kind="agent", population="voters", index={"lit": 3})
    shard.tell(steps.Tell(id="step:tell", span=span, target=target, sender=None, where=None, message={"lit": "two"}),
               {"seed": 7})
    shard.broadcast("three")
    assert shard.memory_of(3) == [("user", "two"), ("user", "three")]  # memory = last 2
    assert shard.memory_of(4) == [("user", "one"), ("user", "three")]
    assert shard.inspect(3)["persona"]["age"] >= 20


def test_run_state_folds_the_events_of_a_run(flagship_runs):
    from populace.runtime.store.events import RunState, read_events

    summary, _, run_dir = flagship_runs["ray-2"]
    events = read_events(str(run_dir / "events.jsonl"))
    state = RunState.from_events(events)
    assert state.status == "finished" and state.executor == "ray" and state.shards == {"players": 2}
    assert state.agents_done == summary["agent_steps"] == 9000 and state.calls == summary["calls"]
    assert len(state.records) == 3 and state.records[-1]["round"] == 3
    shard_events = [e for e in events if e["type"] == "shard_finished"]
    assert len(shard_events) == 6 and {e["agents_done"] for e in shard_events} >= {3000}
    # a torn last line (a crash mid-write) is skipped, not fatal
    torn = run_dir / "torn.jsonl"
    torn.write_text((run_dir / "events.jsonl").read_text() + '{"type": "step_sta')
    assert len(read_events(str(torn))) == len(events)


def test_progress_prints_plain_lines_off_a_terminal(tmp_path):
    import io

    from rich.console import Console

    from populace.cli.progress import Progress

    out = io.StringIO()
    plan = plan_from_dict(compile_file(str(FLAGSHIP), ["players=200"]).plan)
    with Progress(console=Console(file=out, force_terminal=False)) as progress:
        run_plan(plan, executor="local", run_dir=str(tmp_path / "p"), listener=progress)
    lines = out.getvalue().splitlines()
    assert [line.split("[")[0] for line in lines] == ["step:ask.guess"] * 3
    assert "200 agents" in lines[0]


def test_pause_resume_and_stop_through_the_control_file(tmp_path):
    import threading

    from populace.runtime.store.events import read_events
    from populace.runtime.store.rundir import request_control

    plan = plan_from_dict(compile_file(str(FLAGSHIP), ["players=100", "rounds=50"]).plan)
    run_dir = tmp_path / "controlled"
    run_dir.mkdir()
    seen = []

    def listener(event):
        seen.append(event["type"])
        if event["type"] == "record" and event["values"]["round"] == 2 and "run_paused" not in seen:
            request_control(str(run_dir), "pause")
        if event["type"] == "run_paused":
            # resume from another thread a moment later, then stop at the next record
            threading.Timer(0.3, request_control, (str(run_dir), "resume")).start()
        if event["type"] == "record" and event["values"]["round"] == 4:
            request_control(str(run_dir), "stop")

    summary = run_plan(plan, executor="local", run_dir=str(run_dir), listener=listener)
    assert summary["status"] == "stopped"
    events = read_events(str(run_dir / "events.jsonl"))
    kinds = [e["type"] for e in events]
    assert kinds.index("run_paused") < kinds.index("run_resumed") < kinds.index("stop_requested")
    records = [e["values"]["round"] for e in events if e["type"] == "record"]
    assert records == [1, 2, 3, 4]  # everything written so far is kept; nothing after the stop
    assert (run_dir / "summary.json").exists() and len(list((run_dir / "asks" / "ask.guess").iterdir())) == 4


def test_an_unwritable_run_directory_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the run directory's parent should be")
    code = main(["run", str(FLAGSHIP), "--set", "players=50", "--executor", "local", "--quiet",
                 "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: the run cannot write {blocker / 'run'}: Not a directory.") and err.count("\n") == 1


def test_fields_of_a_record_answer_can_be_aggregated(tmp_path):
    path = tmp_path / "rec.pop"
    path.write_text('''scenario s { seed = 3 }
model m { provider = mock }
agent A { model = m }
population p = 50 x A
workflow {
  ask p "Answer with reasons." -> answer: { x: int in 0..10, why: str }
  record mean_x = mean(p.answer.x), n = count(p.answer.x)
}
''')
    _, metrics, run_dir = run(path, tmp_path, "r")
    answers = pd.read_parquet(run_dir / "asks" / "ask.answer" / "part-0.parquet")["value"]  # a struct column
    assert metrics[0]["n"] == 50 and metrics[0]["mean_x"] == pytest.approx(answers.map(lambda d: d["x"]).mean())


def test_float_aggregates_are_the_same_whatever_the_sharding(tmp_path):
    """mean, sum and std of non-integer values: correctly rounded sums, so 1, 3 and 7 shards agree
    bit for bit, and with math.fsum over the personas file."""
    import math

    scenario = tmp_path / "f.pop"
    scenario.write_text('scenario f {\n  seed = 3\n}\nmodel m { provider = mock }\n'
                        'persona p {\n  x ~ beta(2, 5)\n}\nagent A {\n  persona = p\n  model = m\n}\n'
                        'population people = 10001 x A\n'
                        'workflow {\n  record mean = mean(people.x), total = sum(people.x), sd = std(people.x)\n}\n')
    records = []
    for shards in (1, 3, 7):
        run_dir = tmp_path / f"s{shards}"
        assert main(["run", str(scenario), "--executor", "local", "--shards", str(shards), "--quiet",
                     "--run-dir", str(run_dir)]) == 0
        records.append(json.loads((run_dir / "metrics.jsonl").read_text()))
    assert records[0] == records[1] == records[2]
    x = pd.read_parquet(tmp_path / "s1" / "personas.parquet")["x"].tolist()
    assert records[0]["total"] == math.fsum(x) and records[0]["mean"] == math.fsum(x) / len(x)


def test_the_live_panel_shows_calls_in_flight_cost_and_restarts():
    """The terminal's live panel folds the same events as the monitor page."""
    import io

    from rich.console import Console

    from populace.cli.progress import Progress

    progress = Progress(quiet=True)
    for event in [{"type": "run_started", "scenario": "x", "agents": {"p": 10}, "shards": {"p": 2}, "executor": "ray"},
                  {"type": "step_started", "step": "step:ask.a", "iteration": "", "op": "ask", "population": "p", "agents": 10},
                  {"type": "calls_in_flight", "models": {"claude": 37}},
                  {"type": "models", "models": {"claude": {"calls": 5, "tokens_in": 1, "tokens_out": 2, "cost_usd": 0.0123}}},
                  {"type": "shard_restarted", "population": "p", "shard": 1}]:
        progress(event)
    console = Console(file=io.StringIO(), width=100)
    console.print(progress._render())
    text = console.file.getvalue()
    assert "in flight    37 requests" in text and "cost so far  $0.0123" in text and "1 shard restart(s)" in text


def test_monitor_on_a_port_in_use_is_refused_before_the_run(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["run", str(FLAGSHIP), "--set", "players=20", "--executor", "local", "--quiet", "--monitor",
                     "--port", str(port), "--run-dir", str(tmp_path / "r")])
    assert code == 1
    assert f"the monitor cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "r" / "summary.json").exists()
