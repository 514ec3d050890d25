"""Checkpoints and resume: kill -9 the driver mid-run, resume, and get the uninterrupted results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"


def slow_flagship(tmp_path: Path) -> Path:
    """The flagship on its mock model with a little latency, so a kill lands in the middle."""
    text = FLAGSHIP.read_text().replace("model   = level_k", "model   = writer")
    text = text.replace("  provider = mock                   # deterministic text, no network",
                        "  provider = mock\n  latency = 50ms\n  in_flight = 1000")
    path = tmp_path / "slow.pop"
    path.write_text(text)
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def asks(run_dir: Path) -> dict:
    return {p.relative_to(run_dir).as_posix(): pd.read_parquet(p) for p in sorted((run_dir / "asks").rglob("*.parquet"))}


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.endswith("}")]


def start(path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "populace.cli", "run", str(path), "--set", "players=3000", "--set", "rounds=8",
           "--executor", "local", "--quiet", "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
def test_kill_the_driver_then_resume_gives_identical_results(tmp_path):
    path = slow_flagship(tmp_path)
    whole = tmp_path / "whole"
    proc = start(path, whole)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]

    broken = tmp_path / "broken"
    proc = start(path, broken)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the fourth round's record, then kill -9
        if (broken / "metrics.jsonl").exists() and len((broken / "metrics.jsonl").read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics(broken)) < 8, "the run finished before it could be killed"
    assert not (broken / "summary.json").exists()

    assert main(["resume", str(broken), "--executor", "local", "--quiet"]) == 0
    assert metrics(broken) == metrics(whole)
    a, b = asks(whole), asks(broken)
    assert a.keys() == b.keys() and len(a) == 8
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])
    pd.testing.assert_frame_equal(pd.read_parquet(whole / "personas.parquet"), pd.read_parquet(broken / "personas.parquet"))
    summary = json.loads((broken / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["agent_steps"] == 8 * 3000
    resumed = [e for e in events(broken) if e["type"] == "run_started" and "resumed_from" in e]
    assert len(resumed) == 1
    # One fold: the resumed run's events (the redone step in them twice) count as the uninterrupted
    # run's, and as its own summary, which the driver folded the same way.
    from populace.runtime.store.events import fold_events

    folded, uninterrupted = fold_events(str(broken / "events.jsonl")), fold_events(str(whole / "events.jsonl"))
    for key in ("steps_done", "agents_done", "calls", "answers", "errors", "tokens_in", "tokens_out"):
        assert getattr(folded, key) == getattr(uninterrupted, key), key
    assert (folded.steps_done, folded.agents_done, folded.calls) == (summary["steps"], summary["agent_steps"], summary["calls"])
    assert folded.status == "finished" and len(folded.records) == len(metrics(whole))


def test_resume_falls_back_to_the_previous_checkpoint_and_refuses_without_one(tmp_path, capsys):
    path = slow_flagship(tmp_path)
    run_dir = tmp_path / "r"
    assert main(["run", str(path), "--set", "players=300", "--set", "rounds=4", "--executor", "local",
                 "--quiet", "--run-dir", str(run_dir)]) == 0
    finished = metrics(run_dir)
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2  # only the last two are kept
    # A finished run is not run again (its last step would be redone for nothing).
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 1
    assert "finished already; there is nothing to resume" in capsys.readouterr().err
    # Damage the newest checkpoint's shard file: resume must use the one before it.
    newest = checkpoints[-1]
    for f in newest.glob("*.arrow"):
        f.write_bytes(b"not arrow at all")
    (run_dir / "summary.json").unlink()
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert metrics(run_dir) == finished
    resumed = [e for e in events(run_dir) if e.get("resumed_from")]
    assert resumed[-1]["resumed_from"] == int(checkpoints[-2].name)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["resume", str(empty), "--executor", "local"]) == 1
    assert "cannot be resumed" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_on_ray(tmp_path, ray_session):
    path = slow_flagship(tmp_path)
    run_dir = tmp_path / "ray"
    assert main(["run", str(path), "--set", "players=500", "--set", "rounds=3", "--shards", "2",
                 "--quiet", "--run-dir", str(run_dir)]) == 0
    finished = metrics(run_dir)
    (run_dir / "summary.json").unlink()
    assert main(["resume", str(run_dir), "--quiet"]) == 0  # from the last checkpoint (before round 3's ask)
    assert metrics(run_dir) == finished


@pytest.mark.slow
def test_a_shard_worker_killed_mid_step_is_restarted_and_the_results_are_unchanged(tmp_path, ray_session):
    import threading

    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine.run import run_plan

    path = slow_flagship(tmp_path)
    text = path.read_text().replace("latency = 50ms", "latency = 600ms")
    path.write_text(text)
    plan = plan_from_dict(compile_file(str(path), ["players=400", "rounds=3"]).plan)
    base = run_plan(plan, executor="local", shards=2, run_dir=str(tmp_path / "calm"))
    assert base["status"] == "finished"

    killed = []

    pids = {}

    def listener(event):
        # Learn shard 1's worker pid while it is idle; in round 2's ask, kill it while it waits
        # on its model calls (mid-step).
        if event["type"] == "run_started":
            pids[1] = ray_session.get(executor_ref["ex"].actors["players"][1].pid.remote())
        if event["type"] == "step_started" and event.get("iteration") == "[round=2]" and not killed:
            def kill():
                time.sleep(0.3)
                os.kill(pids[1], signal.SIGKILL)
                killed.append(pids[1])
            threading.Thread(target=kill).start()

    # reach the executor the run creates, to find the worker's pid
    import populace.runtime.engine.run as run_module

    executor_ref = {}
    original = run_module.make_executor

    def spy(*args, **kwargs):
        executor_ref["ex"] = original(*args, **kwargs)
        return executor_ref["ex"]

    run_module.make_executor = spy
    try:
        summary = run_plan(plan, executor="ray", shards=2, run_dir=str(tmp_path / "stormy"), listener=listener)
    finally:
        run_module.make_executor = original
    assert killed and summary["status"] == "finished"
    assert metrics(tmp_path / "stormy") == metrics(tmp_path / "calm")
    a, b = asks(tmp_path / "calm"), asks(tmp_path / "stormy")
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])
    restarts = [e for e in events(tmp_path / "stormy") if e["type"] == "shard_restarted"]
    # Back from the checkpoint taken just before round 2's ask; the ask is sent again, nothing replayed.
    assert len(restarts) == 1 and restarts[0]["shard"] == 1 and restarts[0]["from_checkpoint"] == "000002"
    assert restarts[0]["iteration"] == "[round=2]" and restarts[0]["replayed"] == 0


def test_checkpoint_every_on_the_command_line(tmp_path):
    path = slow_flagship(tmp_path)
    for every, expected in (("0", 0), ("2", 2)):
        run_dir = tmp_path / f"every-{every}"
        assert main(["run", str(path), "--set", "players=50", "--set", "rounds=4", "--executor", "local", "--quiet",
                     "--checkpoint-every", every, "--run-dir", str(run_dir)]) == 0
        taken = [e for e in events(run_dir) if e["type"] == "checkpoint"]
        assert len(taken) == expected  # before asks 1 and 3 of 4 with N=2; none with 0


@pytest.mark.slow
def test_a_shard_that_keeps_dying_fails_the_run_clearly_after_three_restarts(tmp_path, ray_session):
    """Every restart redoes the step that kills it: after MAX_RESTARTS the run fails with one clear
    error, the restarts are events, and the checkpoints before the step stay for a resume."""
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine.executors import MAX_RESTARTS
    from populace.runtime.engine.run import run_plan

    text = FLAGSHIP.read_text().replace('function = "populace.runtime.policies:level_k"',
                                        'function = "policies_for_tests:dies_in_round_two"')
    assert "dies_in_round_two" in text
    path = tmp_path / "dying.pop"
    path.write_text(text)
    plan = plan_from_dict(compile_file(str(path), ["players=20", "rounds=3"]).plan)
    run_dir = tmp_path / "r"
    summary = run_plan(plan, executor="ray", shards=2, run_dir=str(run_dir))
    assert summary["status"] == "failed"
    assert "died" in summary["error"].lower() or "actor" in summary["error"].lower(), summary["error"]
    restarts = [e for e in events(run_dir) if e["type"] == "shard_restarted"]
    assert len(restarts) == MAX_RESTARTS and {e["shard"] for e in restarts} == {1}
    assert [m["round"] for m in metrics(run_dir)] == [1]  # round 1 was recorded, round 2 never finished
    assert any((run_dir / "checkpoints").iterdir())


def test_a_stopped_run_resumes_and_keeps_its_checkpoint_setting(tmp_path, capsys):
    """Stop (the monitor's button writes control.json) ends a run; resume clears that request,
    continues with the run's own --checkpoint-every and its event times go on from the checkpoint."""
    from populace.runtime.store.rundir import request_control

    path = slow_flagship(tmp_path)
    calm = tmp_path / "calm"
    assert main(["run", str(path), "--set", "players=60", "--set", "rounds=6", "--executor", "local", "--quiet",
                 "--checkpoint-every", "2", "--run-dir", str(calm)]) == 0
    run_dir = tmp_path / "r"
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine.run import run_plan

    plan = plan_from_dict(compile_file(str(path), ["players=60", "rounds=6"]).plan)

    def stop_after_round_three(event):
        if event["type"] == "record" and event.get("iteration") == "[round=3]":
            request_control(str(run_dir), "stop")

    summary = run_plan(plan, executor="local", run_dir=str(run_dir), listener=stop_after_round_three, checkpoint_every=2)
    assert summary["status"] == "stopped" and len(metrics(run_dir)) == 3
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert metrics(run_dir) == metrics(calm)
    evs = events(run_dir)
    resumed_at = next(i for i, e in enumerate(evs) if e.get("resumed_from"))
    assert evs[resumed_at]["t"] > 0  # one time axis across the two drivers
    # checkpoints before every 2nd agent step after the resume too, as in the uninterrupted run
    checkpoints = [e for e in evs[resumed_at:] if e["type"] == "checkpoint"]
    agent_steps = [e for e in evs[resumed_at:] if e["type"] == "step_started" and e["op"] == "ask"]
    assert len(checkpoints) <= (len(agent_steps) + 1) // 2


def test_a_run_directory_has_one_driver_at_a_time(tmp_path, capsys):
    from populace.runtime.store.rundir import lock

    path = slow_flagship(tmp_path)
    run_dir = tmp_path / "r"
    assert main(["run", str(path), "--set", "players=30", "--set", "rounds=2", "--executor", "local",
                 "--quiet", "--run-dir", str(run_dir)]) == 0
    (run_dir / "summary.json").unlink()
    held = lock(str(run_dir))  # as a driver still running there would
    try:
        assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 1
        assert "is in use by another Populace process" in capsys.readouterr().err
        assert main(["run", str(path), "--executor", "local", "--quiet", "--run-dir", str(run_dir)]) == 1
        assert "is in use by another Populace process" in capsys.readouterr().err
    finally:
        os.close(held)
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0


def test_a_damaged_record_is_not_resumed_over(tmp_path, capsys):
    """A complete metrics.jsonl line that is not JSON is counted by the checkpoints after it: they
    cannot make it again, so resume uses an older checkpoint (or says so)."""
    path = slow_flagship(tmp_path)
    run_dir = tmp_path / "r"
    assert main(["run", str(path), "--set", "players=30", "--set", "rounds=4", "--executor", "local",
                 "--quiet", "--run-dir", str(run_dir)]) == 0
    finished = metrics(run_dir)
    (run_dir / "summary.json").unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[-1] = lines[-1][:10] + "\n"  # the last record, cut
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    code = main(["resume", str(run_dir), "--executor", "local", "--quiet"])
    if code == 0:
        assert metrics(run_dir) == finished  # an older checkpoint made the record again
    else:
        assert "metrics.jsonl line 4 is damaged" in capsys.readouterr().err
