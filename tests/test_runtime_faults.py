"""Faults around the run directory: formats from a newer Populace, a full disk, Ctrl-C, a lost Ray node.

Each test runs the command line (in this process or in a subprocess, as a user would) and checks
the one-line error or the resumed run's results against an undisturbed run.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from populace.cli.main import main
from populace.runtime.store.events import RunState, read_events
from populace.runtime.store.rundir import RUN_FORMAT, NewerFormatError

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"


def small_run(run_dir: Path, *extra: str) -> None:
    """The flagship on its python policy: 60 players, 3 rounds, under a second."""
    assert main(["run", str(FLAGSHIP), "--set", "players=60", "--set", "rounds=3", "--executor", "local", "--quiet",
                 "--run-dir", str(run_dir), *extra]) == 0


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rewrite_events(run_dir: Path, change) -> None:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    for e in events:
        if e["type"] == "run_started":
            change(e)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def rewrite_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def restamp_arrow(path: Path, metadata: dict | None) -> None:
    table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()  # not mapped: we rewrite it
    table = table.replace_schema_metadata(metadata)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- formats

def test_the_run_directory_carries_its_format(tmp_path):
    run_dir = tmp_path / "r"
    small_run(run_dir)
    started = read_events(str(run_dir / "events.jsonl"))[0]
    assert started["type"] == "run_started" and started["format"] == RUN_FORMAT and started["populace_version"]
    for checkpoint in (run_dir / "checkpoints").iterdir():
        assert json.loads((checkpoint / "driver.json").read_text())["format"] == RUN_FORMAT
        with pa.memory_map(str(checkpoint / "players-0.arrow")) as source:
            meta = pa.ipc.open_file(source).schema.metadata
        assert meta[b"populace_format"] == str(RUN_FORMAT).encode()


def test_a_run_directory_without_stamps_is_format_1_and_resumes(tmp_path):
    run_dir = tmp_path / "old"
    small_run(run_dir)
    finished = metrics(run_dir)
    # What a run directory looked like before stamps: none in events, driver.json or Arrow files.
    rewrite_events(run_dir, lambda e: (e.pop("format"), e.pop("populace_version")))
    for checkpoint in (run_dir / "checkpoints").iterdir():
        rewrite_json(checkpoint / "driver.json", lambda s: (s.pop("format"), s.pop("populace_version")))
        restamp_arrow(checkpoint / "players-0.arrow", None)
    assert RunState.from_events(read_events(str(run_dir / "events.jsonl"))).status == "finished"
    (run_dir / "summary.json").unlink()
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert metrics(run_dir) == finished


def test_checkpoints_with_model_latencies_resume(tmp_path):
    """driver.json keeps each model's latencies as a histogram (as a list before): both are usable."""
    run_dir = tmp_path / "r"
    small_run(run_dir)
    finished = metrics(run_dir)
    newest, before = sorted((run_dir / "checkpoints").iterdir())[::-1]
    rewrite_json(newest / "driver.json", lambda s: s.update(latencies={"level_k": {"12": 3, "40": 1}}))
    rewrite_json(before / "driver.json", lambda s: s.update(latencies={"level_k": [0.01, 0.2]}))
    from populace.compiler.plan import read_plan
    from populace.runtime.store.checkpoints import checkpoints

    assert [Path(d).name for d, _ in checkpoints(str(run_dir), read_plan(str(run_dir / "plan.json")))] == [
        newest.name, before.name]
    (run_dir / "summary.json").unlink()
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert metrics(run_dir) == finished


@pytest.mark.parametrize("where", ["driver.json", "arrow", "events"])
def test_a_newer_format_is_refused_not_taken_for_damage(tmp_path, capsys, where):
    run_dir = tmp_path / where
    small_run(run_dir)
    (run_dir / "summary.json").unlink()
    newest = sorted((run_dir / "checkpoints").iterdir())[-1]
    newer = RUN_FORMAT + 1
    if where == "driver.json":
        rewrite_json(newest / "driver.json", lambda s: s.update(format=newer, populace_version="9.0.0"))
        named = newest / "driver.json"
    elif where == "arrow":
        restamp_arrow(newest / "players-0.arrow", {"populace_format": str(newer), "populace_version": "9.0.0"})
        named = newest / "players-0.arrow"
    else:
        rewrite_events(run_dir, lambda e: e.update(format=newer, populace_version="9.0.0"))
        named = run_dir / "events.jsonl"
    before = (run_dir / "events.jsonl").read_bytes()
    capsys.readouterr()
    # The checkpoint before the newest is fine, but a newer format is not damage: no fall back.
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"run format {newer} (written by Populace 9.0.0)" in line and "upgrade Populace" in line
    assert named.name in line
    assert (run_dir / "events.jsonl").read_bytes() == before  # nothing appended
    assert not (run_dir / "summary.json").exists()
    if where == "events":
        with pytest.raises(NewerFormatError, match="run format 2"):
            read_events(str(run_dir / "events.jsonl"))
        with pytest.raises(NewerFormatError):
            RunState.from_events([{"type": "run_started", "format": newer}])
        assert main(["monitor", str(run_dir), "--port", "1"]) == 1  # refused before serving anything
        assert "upgrade Populace" in one_error_line(capsys.readouterr().err)


def test_the_monitor_refuses_a_plan_of_a_newer_major_version(tmp_path, capsys):
    run_dir = tmp_path / "r"
    small_run(run_dir)
    rewrite_json(run_dir / "plan.json", lambda p: p.update(plan_version="2.0"))
    capsys.readouterr()
    assert main(["monitor", str(run_dir), "--port", "1"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "plan.json" in line and "version 2.0" in line


# ---------------------------------------------------------------- Ctrl-C

def slow_flagship(tmp_path: Path, latency: str = "400ms") -> Path:
    """The flagship on its mock model, each round's ask taking `latency`, so a signal lands mid-run."""
    text = FLAGSHIP.read_text().replace("model   = level_k", "model   = writer")
    text = text.replace("  provider = mock                   # deterministic text, no network",
                        f"  provider = mock\n  latency = {latency}\n  in_flight = 1000")
    path = tmp_path / "slow.pop"
    path.write_text(text)
    return path


def cli(*args: str, file_size_limit: int | None = None, code: str | None = None, **popen) -> subprocess.Popen:
    """`populace ARGS` (or python `code` with ARGS) in a subprocess; with `file_size_limit`, writes
    past that many bytes fail with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored), as on a full disk."""
    body = code or "from populace.cli import main\nsys.exit(main(sys.argv[1:]))"
    if file_size_limit is not None:
        body = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit}))\n" + body)
    command = [sys.executable, "-c", "import sys\n" + body, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_records(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        path = run_dir / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} records in {run_dir} (exit {proc.poll()})")


def same_results(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    files = sorted(p.relative_to(a) for p in (a / "asks").rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in (b / "asks").rglob("*.parquet")) and files
    for f in files + [Path("personas.parquet")]:
        assert pq.read_table(a / f).equals(pq.read_table(b / f)), f


@pytest.mark.slow
def test_ctrl_c_stops_the_run_and_resume_finishes_it_identically(tmp_path):
    path = slow_flagship(tmp_path)
    run = ["run", str(path), "--set", "players=300", "--set", "rounds=8", "--executor", "local"]
    whole = tmp_path / "whole"
    proc = cli(*run, "--quiet", "--run-dir", str(whole))
    assert proc.wait(timeout=120) == 0, proc.stderr.read()

    broken = tmp_path / "broken"
    # Not --quiet: the progress lines are on; a terminal's Ctrl-C is SIGINT to the process.
    proc = cli(*run, "--run-dir", str(broken), start_new_session=True)
    wait_for_records(broken, 2, proc)
    time.sleep(0.2)  # into round 3's ask
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped" in out
    assert f"`populace resume {broken}` continues from the last checkpoint" in err
    summary = json.loads((broken / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["agent_steps"] < 8 * 300
    state = RunState.from_events(read_events(str(broken / "events.jsonl")))
    assert state.status == "stopped" and 2 <= len(state.records) < 8

    proc = cli("resume", str(broken), "--executor", "local", "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    same_results(whole, broken)
    assert json.loads((broken / "summary.json").read_text())["status"] == "finished"


# ---------------------------------------------------------------- a full disk

@contextlib.contextmanager
def small_disk(directory: Path, size: str, how: str):
    """A directory that fills up: a tmpfs of `size` (how="tmpfs", when mounting is permitted), else a
    file size limit for the processes started in it (RLIMIT_FSIZE: writes fail with EFBIG, the same
    code path as ENOSPC). Yields (how it was done, grow()): grow() makes room again."""
    directory.mkdir()
    mounted = False
    if how == "tmpfs":
        try:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                                     capture_output=True).returncode == 0
        except OSError:  # no mount command
            mounted = False

    def grow():
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(directory)], check=True)

    try:
        yield ("tmpfs" if mounted else "rlimit"), grow
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=True)


def assert_nothing_looks_complete_that_is_not(run_dir: Path) -> None:
    """No temporary file left; every file that exists is whole (Parquet, JSON, complete checkpoints)."""
    leftovers = [p for p in run_dir.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for p in run_dir.rglob("*.parquet"):
        pq.read_table(p)
    for p in run_dir.rglob("*.json"):
        json.loads(p.read_text())
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if (checkpoint / "driver.json").exists():
            for p in checkpoint.glob("*.arrow"):
                pa.ipc.open_file(pa.BufferReader(p.read_bytes())).read_all()


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_a_full_disk_is_one_clear_line_and_the_run_resumes_once_there_is_room(tmp_path, how):
    path = slow_flagship(tmp_path, latency="1ms")
    run = ["run", str(path), "--set", "players=3000", "--set", "rounds=8", "--executor", "local", "--quiet"]
    whole = tmp_path / "whole"
    proc = cli(*run, "--run-dir", str(whole))
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    # The second checkpoint's shard file is ~700 KB (memory grows each round): 1 MB fills before it.
    with small_disk(tmp_path / "disk", "1m", how) as (done_by, grow):
        run_dir = tmp_path / "disk" / "run"
        proc = cli(*run, "--run-dir", str(run_dir), file_size_limit=512 * 1024 if done_by == "rlimit" else None)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        line = one_error_line(err)
        reason = "No space left on device" if done_by == "tmpfs" else "File too large"
        assert line.startswith(f"error: the run cannot write {run_dir}/") and f": {reason}." in line, line
        assert f"`populace resume {run_dir}` continues from the last checkpoint" in line
        assert_nothing_looks_complete_that_is_not(run_dir)
        summary = run_dir / "summary.json"
        assert not summary.exists() or json.loads(summary.read_text())["status"] == "failed"
        assert len(metrics(run_dir)) < 8

        grow()
        proc = cli("resume", str(run_dir), "--executor", "local", "--quiet")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        same_results(whole, run_dir)


CACHE_ON_A_FULL_DISK = """
import sys
from populace.runtime.models.cache import ResponseCache
cache = ResponseCache(sys.argv[1])
for i in range(100):
    cache.put(str(i), "x" * 50_000, {}, "m")
try:
    cache.flush()
except OSError as e:
    print(f"{e.filename}: {e.strerror}")
    sys.exit(3)
"""


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_the_response_cache_on_a_full_disk_raises_instead_of_hanging(tmp_path, how):
    with small_disk(tmp_path / "disk", "1m", how) as (done_by, _):
        path = tmp_path / "disk" / "cache.sqlite"
        proc = cli(str(path), file_size_limit=512 * 1024 if done_by == "rlimit" else None, code=CACHE_ON_A_FULL_DISK)
        out, err = proc.communicate(timeout=60)  # before: the writer thread died and flush() waited forever
        assert proc.returncode == 3, err
        # SQLite says "full" for ENOSPC and "disk I/O error" for EFBIG
        assert out.strip() in (f"{path}: database or disk is full", f"{path}: disk I/O error"), out


# ---------------------------------------------------------------- a lost Ray node

LOST_NODE = """
import json, os, sys, threading, time
import ray
from ray.cluster_utils import Cluster
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
import populace.runtime.engine.run as run_module

scenario, run_dir = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20,
                                                         "include_dashboard": False})
second = cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
cluster.wait_for_nodes()
plan = plan_from_dict(compile_file(scenario, ["players=400", "rounds=3"]).plan)
made, seen = {}, {}
original = run_module.make_executor

def spy(*args, **kwargs):  # reach the executor the run creates, to see where its shards are
    made["executor"] = original(*args, **kwargs)
    return made["executor"]

def listener(event):
    if event["type"] == "run_started":
        nodes = [ray.get(a.info.remote())["node"] for a in made["executor"].actors["players"]]
        seen["placed"] = ["second" if n == second.node_id else "head" for n in nodes]
    if event["type"] == "step_started" and event.get("iteration") == "[round=2]" and "removed" not in seen:
        seen["removed"] = False
        def remove():  # mid-step: the shard on the second node waits on its model calls
            time.sleep(0.3)
            cluster.remove_node(second)
            seen["removed"] = True
        threading.Thread(target=remove).start()

run_module.make_executor = spy
summary = run_module.run_plan(plan, executor="ray", shards=2, run_dir=run_dir, listener=listener)
print(json.dumps(dict(seen, status=summary["status"])), flush=True)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_a_lost_ray_node_restarts_its_shards_on_the_head_and_the_results_are_unchanged(tmp_path):
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine.run import run_plan

    path = slow_flagship(tmp_path, latency="600ms")
    plan = plan_from_dict(compile_file(str(path), ["players=400", "rounds=3"]).plan)
    assert run_plan(plan, executor="local", shards=2, run_dir=str(tmp_path / "calm"))["status"] == "finished"

    # A cluster of its own (head and a second node, 1 CPU each) in its own process: this test
    # session's Ray (ray_session) is another cluster.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    proc = cli(str(path), str(tmp_path / "stormy"), code=LOST_NODE, env=env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    # Shards are spread over the nodes: one lived on the second node, and the node went mid-step.
    assert sorted(outcome["placed"]) == ["head", "second"], outcome
    assert outcome["removed"] and outcome["status"] == "finished"
    same_results(tmp_path / "calm", tmp_path / "stormy")
    restarts = [e for e in read_events(str(tmp_path / "stormy" / "events.jsonl")) if e["type"] == "shard_restarted"]
    lost = outcome["placed"].index("second")
    assert len(restarts) == 1 and restarts[0]["shard"] == lost and restarts[0]["iteration"] == "[round=2]"
    assert restarts[0]["from_checkpoint"] == "000002" and restarts[0]["replayed"] == 0
    moved = [e for e in read_events(str(tmp_path / "stormy" / "events.jsonl")) if e["type"] == "shards"][-1]
    assert len({s["node"] for s in moved["shards"]}) == 1  # both shards on the head now
