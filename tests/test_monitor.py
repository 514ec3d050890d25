"""The monitor without a browser: its data functions on a real run directory, the token gate, and
the page through NiceGUI's simulated user (nicegui.testing's user simulation with a root function)."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pandas as pd
import pytest

from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.store.events import RunState
from populace.runtime.monitor.auth import COOKIE, TokenGate, exposed
from populace.runtime.monitor.data import EventTail, MonitorState
from populace.runtime.monitor.files import FilterError, PersonaPages, distribution, find_agent, persona_files
from populace.runtime.engine.run import run_plan

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    plan = plan_from_dict(compile_file(str(FLAGSHIP), ["players=200"]).plan)
    path = tmp_path_factory.mktemp("monitor") / "run"
    run_plan(plan, executor="local", shards=2, run_dir=str(path))
    return path


def monitor_of(path) -> MonitorState:
    monitor = MonitorState(str(path))
    monitor.poll()
    return monitor


# ---------------------------------------------------------------- data

def test_finished_run_reads_as_finished(run_dir):
    monitor = monitor_of(run_dir)
    assert monitor.state.status == "finished"
    rows = monitor.step_rows()
    assert [r["id"] for r in rows] == ["step:repeat.round", "step:ask.guess", "step:let.target",
                                       "step:set.game.winners", "step:record"]
    assert {r["status"] for r in rows} == {"finished"}
    assert rows[0]["iteration"] == "round=3" and rows[1]["runs"] == 3
    assert [r["depth"] for r in rows] == [0, 1, 1, 1, 1]
    assert monitor.eta() == {"step": None, "run": 0.0}
    assert monitor.summary["status"] == "finished"


def test_metrics_and_distribution_match_the_run_directory(run_dir):
    monitor = monitor_of(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    series = monitor.metric_series()
    assert set(series) == {"target", "mean_guess"}  # the loop variable and the histogram are not lines
    assert series["mean_guess"] == (["round=1", "round=2", "round=3"], [m["mean_guess"] for m in metrics])
    path = monitor.latest_ask_file()
    assert path.endswith("asks/ask.guess/round=3/part-0.parquet")
    shown = distribution(path)
    values = pd.read_parquet(path)["value"]
    assert shown["kind"] == "histogram" and sum(shown["counts"]) == len(values) == 200
    # one bar per integer when the range is small: the bar of 0 counts the zeros
    zero = shown["edges"].index(-0.5)
    assert shown["counts"][zero] == int((values == 0).sum())


def test_models_cluster_and_rates(run_dir):
    monitor = monitor_of(run_dir)
    [model] = monitor.model_rows()
    assert model["model"] == "level_k" and model["calls"] == 600 and model["cost_usd"] == 0.0
    assert monitor.cost() == 0.0
    assert model["in_flight"] == 0 and model["retries"] == model["failures"] == 0
    [cluster] = monitor.cluster_rows()
    assert cluster["population"] == "players" and cluster["shards"] == 2 and cluster["shard_steps"] == [3, 3]
    assert sum(cluster["shard_agents"]) == 200
    # where each shard runs and what it holds, from the `shards` events (local executor: one process)
    first, second = cluster["shard_info"]
    assert first["node"] == second["node"] == "local" and first["agents"] == second["agents"] == 100
    assert first["bytes"] > 100 * 8 and first["rss"] > 10 * 2**20 and first["restarts"] == 0
    [node] = monitor.node_rows()
    assert node["node"] == "local" and node["shards"] == ["players/0", "players/1"] and node["agents"] == 200
    assert node["rss"] == first["rss"]  # two shards in one process: its RSS is counted once
    assert len(monitor.throughput) == 3 and monitor.rates()["agents"] > 0


def test_agent_inspector_reads_one_agent(run_dir):
    monitor = monitor_of(run_dir)
    found = find_agent(monitor, 137)
    personas = pd.read_parquet(run_dir / "personas.parquet")
    expected = personas[personas.agent == 137].iloc[0]
    assert found["persona"]["major"] == expected["major"] and found["persona"]["age"] == expected["age"]
    assert [a["iteration"] for a in found["answers"]] == ["[round=3]", "[round=2]", "[round=1]"]
    round2 = pd.read_parquet(run_dir / "asks" / "ask.guess" / "round=2" / "part-0.parquet").set_index("agent").loc[137]
    assert found["answers"][1]["value"] == round2["value"] and found["answers"][1]["reply"] == round2["reply"]
    assert "{{round}}" in found["prompts"]["step:ask.guess"]
    # State, answers and memory as of the last checkpoint (taken just before round 3's ask)
    assert found["state"]["guess"] == round2["value"]
    round1 = pd.read_parquet(run_dir / "asks" / "ask.guess" / "round=1" / "part-0.parquet").set_index("agent").loc[137]
    assert [m["role"] for m in found["memory"]] == ["user", "assistant", "user", "assistant"]
    assert found["memory"][0]["text"].startswith("Round 1.") and found["memory"][1]["text"] == round1["reply"]
    assert find_agent(monitor, 10_000)["persona"] is None


def test_persona_pages_and_filters(run_dir):
    pages = PersonaPages(persona_files(str(run_dir))[""])
    personas = pd.read_parquet(run_dir / "personas.parquet")
    page = pages.page(3)
    assert [r["agent"] for r in page["rows"]] == list(range(60, 80)) and page["pages"] == 10
    assert pages.page(99)["page"] == 9  # clamped to the last page
    economists = personas[personas.major == "economics"]
    page = pages.page(1, "major = economics")
    assert page["total"] == len(economists)
    assert [r["agent"] for r in page["rows"]] == list(economists.agent[20:40])
    assert pages.page(0, "age >= 25")["total"] == int((personas.age >= 25).sum())
    with pytest.raises(FilterError, match="no persona field `salary`"):
        pages.page(0, "salary > 3")
    with pytest.raises(FilterError, match="FIELD OP VALUE"):
        pages.page(0, "economics")


def test_tail_reads_only_new_bytes_and_waits_for_whole_lines(run_dir, tmp_path):
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "step_started")
    head, lines = b"".join(lines[:first + 1]), lines[first + 1:]
    events = tmp_path / "events.jsonl"
    events.write_bytes(head + lines[0][:10])  # up to the first step_started, then half a line
    monitor = MonitorState(str(tmp_path))
    assert monitor.poll()
    assert monitor.state.status == "running" and monitor.running == "step:ask.guess"
    statuses = {r["id"]: r["status"] for r in monitor.step_rows()}
    assert statuses["step:ask.guess"] == "running" and statuses["step:repeat.round"] == "running"
    assert statuses["step:record"] == "pending"
    assert monitor.tail.offset == len(head + lines[0][:10])
    with open(events, "ab") as f:
        f.write(lines[0][10:])
    assert monitor.poll() and monitor.tail.pending == b""
    assert not monitor.poll()  # nothing new: nothing changes
    with open(events, "ab") as f:
        f.writelines(lines[1:])
    monitor.poll()
    assert monitor.state.status == "finished" and monitor.state.steps_done == 3


def test_errors_point_at_the_scenario_line(run_dir, tmp_path):
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    plan = json.loads((run_dir / "plan.json").read_text())
    ask_span = plan["workflow"][0]["body"][0]["span"]
    let_span = plan["workflow"][0]["body"][1]["span"]
    events = [
        {"type": "run_started", "t": 0, "scenario": "g", "plan_hash": "h", "executor": "local",
         "shards": {"players": 1}, "agents": {"players": 200}},
        {"type": "step_started", "t": 0.1, "step": "step:ask.guess", "iteration": "[round=1]", "op": "ask",
         "population": "players", "agents": 200},
        {"type": "agent_errors", "t": 0.2, "step": "step:ask.guess", "iteration": "[round=1]", "count": 1,
         "samples": [{"agent": 7, "error": "value 101 is outside 0..100"}], "span": ask_span},
        {"type": "run_failed", "t": 0.3,
         "error": f"{let_span['file']}:{let_span['line']}:{let_span['column']}: division by zero"},
        {"type": "run_finished", "t": 0.3, "status": "failed"},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    monitor = monitor_of(tmp_path)
    agent, run = monitor.errors
    assert agent["agent"] == 7 and agent["step"] == "step:ask.guess" and agent["where"].endswith(":53:5")
    assert "ask players" in agent["source"]
    assert run["kind"] == "run" and run["error"] == "division by zero" and run["where"].endswith(":59:5")
    assert "let target" in run["source"]
    statuses = {r["id"]: r["status"] for r in monitor.step_rows()}
    assert statuses["step:let.target"] == "failed" and statuses["step:repeat.round"] == "failed"
    assert statuses["step:ask.guess"] == "done" and statuses["step:record"] == "not run"


NODE_A, NODE_B = "a1b2c3d4" + "0" * 48, "e5f6a7b8" + "1" * 48  # Ray node ids: 56 hex digits


def shard_info(shard: int, node: str, ip: str, rss: int = 300 << 20) -> dict:
    return {"shard": shard, "node": node, "ip": ip, "host": f"host-{ip[-1]}", "pid": 100 + shard, "agents": 100,
            "bytes": 14_400, "rss": rss}


def live_events() -> list[list[dict]]:
    """A ray run of the flagship on claude, in three moments: mid-ask, after the ask, after a restart."""
    claude = {"calls": 100, "tokens_in": 5_000, "tokens_out": 100, "retries": 3, "failures": 1, "reasks": 0,
              "cache_hits": 0, "cache_read": 0, "cache_write": 0, "latency_p50_s": 0.42, "latency_p95_s": 1.37,
              "cost_usd": 0.0123}
    mid_ask = [
        {"type": "run_started", "t": 0, "scenario": "guess_two_thirds", "plan_hash": "h", "executor": "ray",
         "shards": {"players": 2}, "agents": {"players": 200}},
        {"type": "shards", "t": 0.01, "population": "players",
         "shards": [shard_info(0, NODE_A, "10.0.0.1"), shard_info(1, NODE_A, "10.0.0.1")]},
        {"type": "step_started", "t": 0.1, "step": "step:ask.guess", "iteration": "[round=1]", "op": "ask",
         "population": "players", "agents": 200},
        {"type": "calls_in_flight", "t": 1.1, "step": "step:ask.guess", "iteration": "[round=1]",
         "models": {"claude": 37}, "shards": 2},
    ]
    after_ask = [
        {"type": "shard_finished", "t": 1.5, "step": "step:ask.guess", "iteration": "[round=1]", "population": "players",
         "shard": 0, "agents_done": 100, "agents_total": 200, "errors": 0},
        {"type": "step_finished", "t": 2.0, "step": "step:ask.guess", "iteration": "[round=1]", "op": "ask",
         "population": "players", "seconds": 1.9, "agents": 200, "calls": 100, "errors": 1, "tokens_in": 5_000,
         "tokens_out": 100, "by_model": {"claude": [100, 5_000, 100]}},
        {"type": "models", "t": 2.0, "models": {"claude": claude}},
        {"type": "shards", "t": 2.0, "population": "players",
         "shards": [shard_info(0, NODE_A, "10.0.0.1", 350 << 20), shard_info(1, NODE_A, "10.0.0.1", 360 << 20)]},
    ]
    restarted = [
        {"type": "step_started", "t": 2.1, "step": "step:ask.guess", "iteration": "[round=2]", "op": "ask",
         "population": "players", "agents": 200},
        {"type": "shard_restarted", "t": 3.0, "population": "players", "shard": 1, "from_checkpoint": "000002",
         "replayed": 0, "step": "step:ask.guess", "iteration": "[round=2]"},
        {"type": "shards", "t": 3.0, "population": "players",
         "shards": [shard_info(0, NODE_A, "10.0.0.1"), shard_info(1, NODE_B, "10.0.0.2", 120 << 20)]},
    ]
    return [mid_ask, after_ask, restarted]


def test_the_fold_keeps_live_models_shards_and_restarts():
    mid_ask, after_ask, restarted = live_events()
    state = RunState.from_events(mid_ask)
    assert state.in_flight == {"claude": 37} and state.by_model == {}
    assert [s["node"] for s in state.shard_info["players"]] == [NODE_A, NODE_A]
    for e in after_ask:
        state.apply(e)
    # step_finished adds its counts; the `models` event then replaces them with the run's totals (not doubled)
    assert state.by_model["claude"]["calls"] == 100 and state.calls == 100
    assert state.by_model["claude"]["latency_p95_s"] == 1.37 and state.by_model["claude"]["retries"] == 3
    assert state.in_flight == {}  # nothing is out between steps
    assert state.shard_info["players"][1]["rss"] == 360 << 20
    for e in restarted:
        state.apply(e)
    assert [r["shard"] for r in state.restarts] == [1]
    assert [s["node"] for s in state.shard_info["players"]] == [NODE_A, NODE_B]
    # damaged events add nothing and raise nothing
    for damaged in ({"type": "models", "models": 3}, {"type": "shards"}, {"type": "shards", "population": "players",
                    "shards": "all"}, {"type": "calls_in_flight"}):
        state.apply(damaged)
    assert state.by_model["claude"]["calls"] == 100 and len(state.shard_info["players"]) == 2
    assert state.in_flight == {}


def test_models_and_cluster_rows_during_a_run(run_dir, tmp_path):
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    mid_ask, after_ask, restarted = live_events()
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in mid_ask))
    monitor = monitor_of(tmp_path)
    [claude] = monitor.model_rows()
    assert claude["in_flight"] == 37 and claude["calls"] == 0 and claude["latency_p50"] is None
    with open(events, "a") as f:
        f.writelines(json.dumps(e) + "\n" for e in after_ask + restarted)
    monitor.poll()
    [claude] = monitor.model_rows()
    assert (claude["in_flight"], claude["calls"], claude["retries"], claude["failures"]) == (0, 100, 3, 1)
    assert (claude["latency_p50"], claude["latency_p95"], claude["cost_usd"]) == (0.42, 1.37, 0.0123)
    assert monitor.cost() == 0.0123
    [cluster] = monitor.cluster_rows()
    assert [s["restarts"] for s in cluster["shard_info"]] == [0, 1]
    nodes = monitor.node_rows()
    assert [(n["node"], n["ip"], n["shards"]) for n in nodes] == [(NODE_A, "10.0.0.1", ["players/0"]),
                                                                  (NODE_B, "10.0.0.2", ["players/1"])]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_run_reports_nodes_models_and_calls_in_flight(tmp_path, monkeypatch, executor, request):
    """Against a slow fake Anthropic: calls in flight are sampled mid-ask (Ray: beside the running
    call), the fold of the events equals summary.json, and every shard says where it runs."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from fake_llm import FakeLLM

    if executor == "ray":
        request.getfixturevalue("ray_session")
    text = FLAGSHIP.read_text().replace("model   = level_k", "model   = claude")
    scenario = tmp_path / "claude.pop"
    scenario.write_text(text)
    plan = plan_from_dict(compile_file(str(scenario), ["players=40", "rounds=1"]).plan)
    with FakeLLM(latency=1.3) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
        summary = run_plan(plan, executor=executor, shards=2, run_dir=str(tmp_path / "run"))
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    samples = [e for e in events if e["type"] == "calls_in_flight"]
    assert samples and max(e["models"]["claude"] for e in samples) > 0
    # the fold of the events is summary.json's account, figure for figure
    last = RunState.from_events(events).by_model["claude"]
    final = summary["models"]["claude"]
    for key in ("calls", "tokens_in", "tokens_out", "retries", "failures", "cost_usd", "latency_p50_s", "latency_p95_s"):
        assert last[key] == final[key], key
    assert last["calls"] == 40
    state = RunState.from_events(events)
    assert state.in_flight == {} and state.by_model["claude"]["calls"] == 40
    shards = state.shard_info["players"]
    assert [s["shard"] for s in shards] == [0, 1] and [s["agents"] for s in shards] == [20, 20]
    if executor == "ray":
        assert all(len(s["node"]) == 56 and s["ip"] and s["pid"] != shards[0]["pid"] for s in shards[1:])
    else:
        assert {s["node"] for s in shards} == {"local"}


def test_event_tail_on_a_missing_file(tmp_path):
    assert EventTail(str(tmp_path / "events.jsonl")).read() == []
    assert not MonitorState(str(tmp_path)).poll()


# ---------------------------------------------------------------- the token gate

async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"page"})


@pytest.mark.asyncio
async def test_token_gate_refuses_requests_without_the_token():
    assert not exposed("127.0.0.1") and not exposed("localhost") and exposed("0.0.0.0")
    gate = TokenGate(_ok, token="s3cret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(gate), base_url="http://monitor") as client:
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await client.get("/?token=wrong")).status_code == 401
        assert (await client.get("/", headers={"Authorization": "Bearer s3cret"})).status_code == 200
        first = await client.get("/?token=s3cret&x=1")
        assert first.status_code == 303 and first.headers["location"] == "/?x=1"
        assert "HttpOnly" in first.headers["set-cookie"] and f"{COOKIE}=s3cret" in first.headers["set-cookie"]
        again = await client.get("/_nicegui/anything")  # the client keeps the cookie
        assert again.status_code == 200 and again.text == "page"


# ---------------------------------------------------------------- the page (simulated user)

@pytest.fixture
def page_user():
    """A simulated browser tab on the monitor page of a run directory."""
    from nicegui.testing.user_simulation import user_simulation

    from populace.runtime.monitor.page import root_for

    def open_page(path):
        return user_simulation(root=root_for(MonitorState(str(path))))

    return open_page


def _page_errors(caplog) -> list:
    """Errors the page logged. NiceGUI's simulated-app teardown sometimes reports that it could not
    cancel its own timer tasks within 2 s (seen on and off here, with every assertion passed): that
    is the test harness shutting down, not the page, and is left out."""
    return [r for r in caplog.records if r.levelname == "ERROR"
            and not (r.name.startswith("nicegui") and r.getMessage().startswith("Could not cancel"))]


def _value(user, marker: str):
    [element] = user.find(marker=marker).elements
    return element


@pytest.mark.asyncio
async def test_page_shows_a_finished_run(page_user, run_dir, caplog):
    from nicegui import ui

    async with page_user(run_dir) as user:
        await user.open("/")
        await user.should_see("guess_two_thirds")
        assert _value(user, "status").text == "finished"
        statuses = [e.text for e in user.find(kind=ui.badge).elements if any(m.startswith("step-status:") for m in e._markers)]
        assert statuses == ["finished"] * 5
        chart = _value(user, "metric:mean_guess")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert chart.options["series"][0]["data"] == [m["mean_guess"] for m in metrics]
        assert chart.options["xAxis"]["data"] == ["round=1", "round=2", "round=3"]
        hist = _value(user, "distribution")
        assert sum(hist.options["series"][0]["data"]) == 200
        assert _value(user, "models").rows[0]["model"] == "level_k"
        assert _value(user, "stat-calls").text == "600"
        await user.should_see("no errors")
        await user.should_see("players: 200 agents in 2 shard(s)")
        # a step's scenario lines
        user.find(marker="step-row:step:ask.guess").click()
        await user.should_see(marker="source")
        assert "53 |     ask players" in _value(user, "source").text
        # the persona table: 20 rows a page, the next page reads the next 20
        personas = _value(user, "personas")
        assert [r["agent"] for r in personas.rows] == list(range(20))
        user.find(marker="next-page").click()
        assert [r["agent"] for r in personas.rows] == list(range(20, 40))
        await user.should_see("page 2 of 10")
        user.find(marker="filter").type("major = art").trigger("keydown.enter")
        assert personas.rows and {r["major"] for r in personas.rows} == {"art"}
        # the inspector
        user.find(marker="agent-id").clear().type("42")
        user.find(marker="inspect").click()
        await user.should_see("agent 42")
        answers = _value(user, "answers")
        assert [r["iteration"] for r in answers.rows] == ["[round=3]", "[round=2]", "[round=1]"]
        # no control on a finished run
        assert not _value(user, "pause").enabled and not _value(user, "stop").enabled
    assert not _page_errors(caplog)


@pytest.mark.asyncio
async def test_page_controls_write_control_json(page_user, run_dir, tmp_path):
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "step_started")
    (tmp_path / "events.jsonl").write_text("".join(lines[:first + 1]))  # started, first step running
    async with page_user(tmp_path) as user:
        await user.open("/")
        assert _value(user, "status").text == "running"
        assert _value(user, "pause").enabled and not _value(user, "resume").enabled
        user.find(marker="pause").click()
        assert json.loads((tmp_path / "control.json").read_text())["action"] == "pause"
        await user.should_see("pause requested")
        with open(tmp_path / "events.jsonl", "a") as f:
            f.write(json.dumps({"type": "run_paused", "t": 1.0, "before": "step:let.target", "iteration": "[round=1]"}) + "\n")
        for _ in range(20):
            if _value(user, "status").text == "paused":
                break
            await asyncio.sleep(0.1)
        assert _value(user, "status").text == "paused" and _value(user, "resume").enabled
        user.find(marker="resume").click()
        assert json.loads((tmp_path / "control.json").read_text())["action"] == "resume"
        user.find(marker="stop").click()
        assert json.loads((tmp_path / "control.json").read_text())["action"] == "stop"


async def _until(check, seconds: float = 5.0) -> None:
    """Wait for the page's next polls (every 0.5 s) until `check()` holds."""
    for _ in range(int(seconds / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    assert check()


@pytest.mark.asyncio
async def test_page_shows_models_and_cluster_live(page_user, run_dir, tmp_path, caplog):
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    mid_ask, after_ask, restarted = live_events()
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in mid_ask))
    async with page_user(tmp_path) as user:
        await user.open("/")
        assert _value(user, "status").text == "running"
        models = _value(user, "models")
        [row] = models.rows
        assert row["model"] == "claude" and row["in_flight"] == 37 and row["latency"] == "—"
        shard = _value(user, "shard:players/1")
        assert shard.text == "node a1b2c3d4 10.0.0.1 host-1\n100 agents\n14.1 KiB cols · 300.0 MiB RSS"
        await user.should_see("executor: ray")
        # the ask ends: totals, retries, failures, latency and cost arrive with its `models` event
        with open(events, "a") as f:
            f.writelines(json.dumps(e) + "\n" for e in after_ask)
        await _until(lambda: models.rows[0]["calls"] == "100")
        [row] = models.rows
        assert (row["in_flight"], row["retries"], row["failures"]) == (0, 3, 1)
        assert row["latency"] == "0.42 / 1.37 s" and row["cost"] == "$0.0123"
        assert _value(user, "stat-cost").text == "$0.0123"
        assert shard.text.endswith("360.0 MiB RSS")
        # shard 1's worker dies and comes back on another node
        with open(events, "a") as f:
            f.writelines(json.dumps(e) + "\n" for e in restarted)
        await _until(lambda: shard.text.startswith("node e5f6a7b8"))
        assert shard.text.startswith("node e5f6a7b8 10.0.0.2 host-2\n")
        await user.should_see("shard 1 · restarted ×1")
        await user.should_see("shard 1 died and was restarted from checkpoint 000002")
        await _until(lambda: len(user.find(marker="node").elements) == 2)
        nodes = sorted(e.text for e in user.find(marker="node").elements)
        assert nodes == ["node a1b2c3d4 10.0.0.1 host-1: 1 shard(s), 100 agents, 14.1 KiB cols, 300.0 MiB RSS",
                         "node e5f6a7b8 10.0.0.2 host-2: 1 shard(s), 100 agents, 14.1 KiB cols, 120.0 MiB RSS"]
    assert not _page_errors(caplog)


@pytest.mark.asyncio
async def test_page_waits_for_a_run_that_has_not_started(page_user, tmp_path):
    async with page_user(tmp_path) as user:
        await user.open("/")
        await user.should_see("waiting for the run to start")
        assert _value(user, "status").text == "pending" and not _value(user, "pause").enabled


# ---------------------------------------------------------------- damaged run directories

def _copy_run(run_dir, tmp_path) -> Path:
    path = tmp_path / "run"
    shutil.copytree(run_dir, path)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_parquet_files_are_reported_not_raised(run_dir, tmp_path):
    path = _copy_run(run_dir, tmp_path)
    _truncate(path / "personas.parquet")
    _truncate(path / "asks" / "ask.guess" / "round=3" / "part-0.parquet")
    monitor = monitor_of(path)
    shown = distribution(monitor.latest_ask_file())
    assert shown["kind"] == "error"
    assert shown["error"].startswith("asks/ask.guess/round=3/part-0.parquet cannot be read: ")
    with pytest.raises(Exception):
        PersonaPages(str(path / "personas.parquet"))
    found = find_agent(monitor, 42)
    assert found["persona"] is None
    assert [p.split(":")[0] for p in found["problems"]] == ["personas.parquet cannot be read",
                                                           "asks/ask.guess/round=3/part-0.parquet cannot be read"]
    assert [a["iteration"] for a in found["answers"]] == ["[round=2]", "[round=1]"]  # the readable ones
    # a damaged checkpoint shard file: the inspector says so instead of showing no state
    [checkpoint] = sorted((path / "checkpoints").iterdir())[-1:]
    for shard in checkpoint.glob("*.arrow"):
        _truncate(shard)
    found = find_agent(monitor, 42)
    assert found["state"] is None and any(".arrow cannot be read" in p for p in found["problems"])


@pytest.mark.asyncio
async def test_page_with_damaged_parquet_files_still_shows_the_run(page_user, run_dir, tmp_path, caplog):
    path = _copy_run(run_dir, tmp_path)
    _truncate(path / "personas.parquet")
    _truncate(path / "asks" / "ask.guess" / "round=3" / "part-0.parquet")
    async with page_user(path) as user:
        await user.open("/")
        await user.should_see("guess_two_thirds")
        assert _value(user, "status").text == "finished"
        assert _value(user, "stat-calls").text == "600"
        assert _value(user, "personas-error").text.startswith("personas.parquet cannot be read: ")
        assert _value(user, "distribution-error").text.startswith("asks/ask.guess/round=3/part-0.parquet cannot be read: ")
        await user.should_not_see(marker="distribution")
        user.find(marker="agent-id").clear().type("42")
        user.find(marker="inspect").click()
        await user.should_see("agent 42")
        await user.should_see("personas.parquet cannot be read")
        assert [r["iteration"] for r in _value(user, "answers").rows] == ["[round=2]", "[round=1]"]
    assert not _page_errors(caplog)


@pytest.mark.asyncio
async def test_page_controls_on_a_read_only_run_directory(page_user, run_dir, tmp_path, monkeypatch, caplog):
    import populace.runtime.monitor.page as monitor_page

    def refuse(run_dir, action):
        raise PermissionError(13, "Permission denied", f"{run_dir}/control.json")

    monkeypatch.setattr(monitor_page, "request_control", refuse)
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "step_started")
    (tmp_path / "events.jsonl").write_text("".join(lines[:first + 1]))
    async with page_user(tmp_path) as user:
        await user.open("/")
        assert _value(user, "status").text == "running"
        user.find(marker="pause").click()
        await user.should_see("cannot pause the run")
        await user.should_see("Permission denied")
        user.find(marker="stop").click()
        await user.should_see("cannot stop the run")
    assert not (tmp_path / "control.json").exists()
    assert not _page_errors(caplog)


@pytest.mark.asyncio
async def test_page_notes_a_missing_or_damaged_plan(page_user, run_dir, tmp_path, caplog):
    path = _copy_run(run_dir, tmp_path)
    (path / "plan.json").unlink()
    async with page_user(path) as user:
        await user.open("/")
        assert _value(user, "status").text == "finished"
        await user.should_see("plan.json is missing")
    (path / "plan.json").write_text('{"workflow": [{"op": ')
    async with page_user(path) as user:
        await user.open("/")
        await user.should_see("plan.json is damaged")
    assert not _page_errors(caplog)


@pytest.mark.asyncio
@pytest.mark.parametrize("events", ["missing", "garbage"])
async def test_page_without_events_shows_the_summary_status(page_user, run_dir, tmp_path, caplog, events):
    path = _copy_run(run_dir, tmp_path)
    if events == "missing":
        (path / "events.jsonl").unlink()
    else:
        (path / "events.jsonl").write_text("not json\n\x00\x01garbage\n")
    async with page_user(path) as user:
        await user.open("/")
        await _until(lambda: _value(user, "status").text == "finished")
        await user.should_see("events.jsonl is missing or damaged")
        assert not _value(user, "pause").enabled and not _value(user, "stop").enabled
    assert not _page_errors(caplog)


def test_a_stopped_run_shows_its_loop_as_stopped(run_dir, tmp_path):
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    second = [i for i, line in enumerate(lines) if json.loads(line)["type"] == "record"][1]
    stopped = {"type": "run_finished", "status": "stopped", "t": 2.0}
    (tmp_path / "events.jsonl").write_text("".join(lines[:second + 1]) + json.dumps(stopped) + "\n")
    monitor = monitor_of(tmp_path)
    assert monitor.state.status == "stopped"
    rows = {r["id"]: r for r in monitor.step_rows()}
    assert rows["step:repeat.round"]["status"] == "stopped" and rows["step:repeat.round"]["iteration"] == "round=2"
    assert rows["step:repeat.round"]["progress"] == pytest.approx(2 / 3)
    assert rows["step:ask.guess"]["status"] == "done"
    # stopped after its last iteration: the loop is done
    lines = [line for line in lines if json.loads(line)["type"] != "run_finished"]
    (tmp_path / "events.jsonl").write_text("".join(lines) + json.dumps(stopped) + "\n")
    assert {r["status"] for r in monitor_of(tmp_path).step_rows()} == {"done"}


def test_summary_read_before_any_event_gives_way_to_the_events(run_dir, tmp_path):
    path = _copy_run(run_dir, tmp_path)
    events = (path / "events.jsonl").read_text().splitlines(keepends=True)
    (path / "events.jsonl").write_text("")
    monitor = monitor_of(path)
    assert monitor.status == "finished" and monitor.file_problems() == [
        "events.jsonl is missing or damaged: the status shown is summary.json's"]
    first = next(i for i, line in enumerate(events) if json.loads(line)["type"] == "step_started")
    (path / "events.jsonl").write_text("".join(events[:first + 1]))
    monitor.poll()
    assert monitor.status == "running" and monitor.summary is None and monitor.file_problems() == []
    (path / "summary.json").write_text("[1, 2]")  # not an object: as good as none
    damaged = monitor_of(tmp_path / "nowhere")
    assert damaged.status == "pending" and damaged.file_problems() == []
    (path / "events.jsonl").unlink()
    assert monitor_of(path).status == "pending"


def test_a_run_whose_driver_died_reads_as_lost(run_dir, tmp_path):
    """The events say running, but the driver's process is gone (kill -9): the page says so, offers
    the resume line, and its controls (which no driver would read) are off."""
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    shutil.copy(run_dir / "plan.json", tmp_path / "plan.json")
    started = {"type": "run_started", "t": 0.0, "scenario": "guess_two_thirds", "agents": {"players": 200},
               "shards": {"players": 2}, "executor": "local", "pid": gone.pid, "host": socket.gethostname()}
    (tmp_path / "events.jsonl").write_text(json.dumps(started) + "\n")
    monitor = MonitorState(str(tmp_path))
    monitor.poll()
    assert monitor.status == "lost" and monitor.state.status == "running"
    assert any("is gone without ending the run" in p and "populace resume" in p for p in monitor.file_problems())
    # the same events from a live driver (this process) read as running
    (tmp_path / "events.jsonl").write_text(json.dumps(dict(started, pid=os.getpid())) + "\n")
    alive = MonitorState(str(tmp_path))
    alive.poll()
    assert alive.status == "running" and not alive.file_problems()
