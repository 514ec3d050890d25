"""The local executor's worker processes (runtime/engine/workers.py): the same results as shards in
the driver's own process, one in_flight limit across processes, a killed worker fails the run
resumably, Ctrl-C stops it and leaves no process behind, and when processes are used at all.
Real worker processes, the real openai SDK, the fake server on 127.0.0.1."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.engine import executors, workers
from populace.runtime.engine.resume import ResumeError, resume_run
from test_runtime_llm import OPENAI_SCENARIO, answers, run

UNEVEN = OPENAI_SCENARIO.replace('ask voters "', 'ask voters where self.id < 150 "')
ROUNDS = OPENAI_SCENARIO.replace(
    '  ask voters "Pick a number for agent {{{{persona.mood}}}}." -> pick: int in 0..100\n'
    '  record mean_pick = mean(voters.pick), answered = count(voters.pick)\n',
    '  repeat 3 as round {{\n'
    '    ask voters "Round {{{{round}}}}: pick a number for agent {{{{self.id}}}}." -> pick: int in 0..100\n'
    '    record mean_pick = mean(voters.pick), answered = count(voters.pick)\n'
    '  }}\n')


def by_agent(prompt: str, request: dict) -> str:
    return str(sum(map(ord, prompt)) % 101)


def scenario_file(tmp_path: Path, text: str, url: str, in_flight: int) -> Path:
    path = tmp_path / "scenario.pop"
    path.write_text(text.format(urls=f'"{url}"', in_flight=in_flight))
    return path


def shard_pids(run_dir: Path) -> set:
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return {s["pid"] for e in events if e["type"] == "shards" for s in e["shards"]}


def test_worker_processes_give_the_in_process_results_and_share_one_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    with FakeLLM(latency=0.1, reply=by_agent) as fake:
        path = scenario_file(tmp_path, UNEVEN, fake.openai_url, 24)
        alone, metrics_alone, dir_alone = run(path, tmp_path, "alone", "local", 3, ["n=300"], workers=0)
        before = fake.stats().requests
        fake._counters.peak_in_flight = 0
        summary, metrics, run_dir = run(path, tmp_path, "workers", "local", 3, ["n=300"], workers=2)
        peak, sent = fake.peak_in_flight, fake.stats().requests - before
    assert summary["workers"] == 2 and "workers" not in alone
    assert metrics == metrics_alone and metrics[0]["answered"] == 150 and sent == 150
    got, want = answers(run_dir), answers(dir_alone)
    assert got.drop(columns="file").equals(want.drop(columns="file"))
    # Shards 0 and 2 live in worker 0, shard 1 in worker 1: two processes, neither the driver.
    pids = shard_pids(run_dir)
    assert len(pids) == 2 and os.getpid() not in pids
    # Worker 1 (50 calls) and worker 0 (100) ask at once, through one pool: the limit holds and is used.
    assert 20 <= peak <= 24, peak


def test_a_missing_key_fails_the_start_as_it_does_in_one_process(tmp_path, monkeypatch):
    monkeypatch.delenv("FAKE_KEY", raising=False)
    path = scenario_file(tmp_path, OPENAI_SCENARIO, "http://127.0.0.1:9/v1", 4)
    errors = []
    for count in (0, 2):
        with pytest.raises(Exception) as info:
            run(path, tmp_path, f"nokey{count}", "local", 2, ["n=20"], workers=count)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] and "FAKE_KEY" in errors[0][1]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("populace-worker")]


def test_a_killed_worker_fails_the_run_and_resume_finishes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    with FakeLLM(latency=0.05, reply=by_agent) as fake:
        path = scenario_file(tmp_path, ROUNDS, fake.openai_url, 8)
        _, reference, _ = run(path, tmp_path, "reference", "local", 2, ["n=80"], workers=0)
        start = fake.stats().requests

        def kill_a_worker():  # in round 2, with worker 1's shard busy asking
            while fake.stats().requests < start + 100:
                time.sleep(0.01)
            victim = next(p for p in multiprocessing.active_children() if p.name == "populace-worker-1")
            os.kill(victim.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_a_worker, daemon=True)
        killer.start()
        summary, _, run_dir = run(path, tmp_path, "killed", "local", 2, ["n=80"], workers=2)
        killer.join(5)
        assert summary["status"] == "failed"
        assert "worker process 1 of the local executor (shards: voters 1) was killed by signal 9" in summary["error"]
        assert "populace resume" in summary["error"]
        with pytest.raises(ResumeError, match="--workers does not apply"):  # not ignored without a word
            resume_run(str(run_dir), executor="ray", workers=2)
        resumed = resume_run(str(run_dir), workers=2)
    assert resumed["status"] == "finished" and resumed["workers"] == 2
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == reference


def test_ctrl_c_stops_the_run_and_leaves_no_worker_behind(tmp_path):
    with FakeLLM(latency=0.2, reply=by_agent) as fake:
        path = scenario_file(tmp_path, ROUNDS, fake.openai_url, 4)
        run_dir = tmp_path / "run"
        env = dict(os.environ, FAKE_KEY="k", RAY_AUTH_MODE="disabled")
        # A process group of its own, as a terminal's: Ctrl-C reaches the driver and its workers.
        proc = subprocess.Popen([sys.executable, "-m", "populace.cli", "run", str(path), "--set", "n=200",
                                 "--executor", "local", "--workers", "2", "--run-dir", str(run_dir), "--quiet"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        while fake.stats().requests < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped", err.decode()[-2000:]
    pids = shard_pids(run_dir)
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_are_refused_on_ray(tmp_path, capsys):
    from populace.cli.main import main

    path = scenario_file(tmp_path, OPENAI_SCENARIO, "http://127.0.0.1:9/v1", 4)
    assert main(["run", str(path), "--workers", "2"]) == 2
    assert "--workers is for --executor local" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(path), "--executor", "local", "--workers", "-1"])


@pytest.mark.parametrize("agents, shards, given, cores, expected", [
    (100, None, None, 4, 0),        # small: start-up would cost more than the cores save
    (20_000, None, None, 4, 4),     # one per core from 20,000 agents
    (20_000, None, None, 1, 0),     # one core: nothing to gain
    (50_000, 1, None, 4, 0),        # one shard asked for: one process
    (100, None, 3, 4, 3),           # as given
    (50_000, None, 0, 4, 0),        # 0: in the driver's process
])
def test_when_worker_processes_are_used(tmp_path, monkeypatch, agents, shards, given, cores, expected):
    monkeypatch.setattr(workers, "cores", lambda: cores)
    path = scenario_file(tmp_path, OPENAI_SCENARIO, "http://127.0.0.1:9/v1", 4)
    plan = plan_from_dict(compile_file(str(path), [f"n={agents}"]).plan)
    assert executors.local_workers(plan, given, shards) == expected


def test_calls_in_flight_are_sampled_from_the_workers_while_they_ask(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    with FakeLLM(latency=0.5, reply=by_agent) as fake:
        path = scenario_file(tmp_path, OPENAI_SCENARIO, fake.openai_url, 4)
        summary, _, run_dir = run(path, tmp_path, "slow", "local", 2, ["n=24"], workers=2)
    assert summary["status"] == "finished"
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    samples = [e["models"] for e in events if e["type"] == "calls_in_flight"]
    # 24 calls, 4 at a time, half a second each: 3 s of asking, sampled every second.
    assert samples and any(0 < m.get("local", 0) <= 4 for m in samples), samples


def _open_cache(path: str, results) -> None:
    from populace.runtime.models.cache import ResponseCache

    try:
        ResponseCache(path).close()
        results.put(None)
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(repr(e))


def test_shards_in_two_processes_open_a_new_cache_together(tmp_path):
    # SQLite answers the second process's switch to WAL "database is locked" at once, without its
    # busy timeout: before the retry, 36 of 150 such pairs failed to start (a worker, or a Ray shard).
    context = multiprocessing.get_context("fork")  # the child only opens SQLite: fork is safe and fast
    failures = []
    for trial in range(40):
        path, results = str(tmp_path / f"cache{trial}.sqlite"), context.Queue()
        procs = [context.Process(target=_open_cache, args=(path, results)) for _ in range(2)]
        [p.start() for p in procs]
        failures += [r for r in (results.get(timeout=60) for _ in procs) if r]
        [p.join() for p in procs]
    assert not failures, failures[:3]
