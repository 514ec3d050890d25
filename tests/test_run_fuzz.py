"""Hostile plan files and run directories: a clear error or a fall back, never a traceback.

Hypothesis mutates a compiled plan (keys deleted, values of another type, bytes cut or flipped, a
wrong version, random JSON) and loads it the way `populace resume` does (read_plan, then the checks
before a run); and it damages a finished run directory (events.jsonl lines torn or replaced,
driver.json and checkpoint files cut, flipped or removed) and runs `populace resume` and the event
fold on it. Each test is bounded to a few seconds.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from populace.compiler import compile_file
from populace.compiler.plan import PlanError, plan_hash, read_plan
from populace.cli.main import main
from populace.runtime.engine.preflight import unsupported
from populace.runtime.store.events import RunState, read_events
from populace.runtime.store.rundir import NewerFormatError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [ROOT / "examples" / name for name in ("guess_two_thirds.pop", "el_farol.pop", "rumor.pop")]
SEED_PLANS = [compile_file(str(p), ["players=60"] if "guess" in p.name else []).plan for p in EXAMPLES]
_WORK = Path(tempfile.mkdtemp(prefix="populace-run-fuzz-"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _locations(value, at=()):
    """Every (container path, key) in a JSON value, depth first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield at, k
            yield from _locations(v, at + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield at, i
            yield from _locations(v, at + (i,))


def _get(value, at):
    for k in at:
        value = value[k]
    return value


@st.composite
def mutated_json(draw, seed):
    """A JSON value with 1-3 structural mutations: a key deleted or renamed, a value of another type."""
    value = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        places = list(_locations(value))
        if not places:
            break
        at, key = draw(st.sampled_from(places))
        parent = _get(value, at)
        kind = draw(st.sampled_from(["delete", "replace", "rename", "duplicate"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "rename" and isinstance(parent, dict):
            parent[key + draw(st.sampled_from(["_", "s", "X"]))] = parent.pop(key)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
    return value


def mangle_bytes(draw, data: bytes) -> bytes:
    """Cut the bytes short, flip a few, or insert junk."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
    if not data:
        return draw(st.binary(max_size=8))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]


# ---------------------------------------------------------------- plan files

@st.composite
def broken_plans(draw) -> bytes:
    seed = draw(st.sampled_from(SEED_PLANS))
    kind = draw(st.sampled_from(["json", "json", "bytes", "version", "random"]))
    if kind == "random":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return mangle_bytes(draw, json.dumps(seed, indent=2).encode())
    if kind == "version":
        plan = dict(seed, plan_version=draw(st.sampled_from(["2.0", "0.9", "1", "1.0.0", "", "x.y"]) | json_values))
    else:
        plan = draw(mutated_json(seed))
    if isinstance(plan, dict) and draw(st.booleans()):
        plan["plan_hash"] = plan_hash(plan)  # a careful hand edit: the hash matches, the schema must catch it
    return json.dumps(plan).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_plans())
def test_a_broken_plan_file_is_refused_with_its_json_path(data):
    path = _WORK / "plan.json"
    path.write_bytes(data)
    try:
        plan = read_plan(str(path))
    except PlanError as e:
        assert e.path.startswith("$"), e
        assert str(e).startswith(e.path + ": ") and e.message
        return
    unsupported(plan)  # what `populace resume` checks next: must not raise either


def test_plan_refusals_name_the_path():
    plan = json.loads(json.dumps(SEED_PLANS[0]))
    del plan["populations"]["players"]["size"]
    plan["plan_hash"] = plan_hash(plan)
    path = _WORK / "named.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanError) as e:
        read_plan(str(path))
    assert e.value.path == "$.populations.players" and "size" in e.value.message
    path.write_bytes(json.dumps(SEED_PLANS[0]).encode()[:-40])
    with pytest.raises(PlanError, match=r"^\$: not valid JSON at line 1 column \d+.*truncated"):
        read_plan(str(path))


# ---------------------------------------------------------------- run directories

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(EXAMPLES[0]), "--set", "players=40", "--set", "rounds=3", "--executor", "local",
                     "--quiet", "--run-dir", str(run_dir)]) == 0
    return run_dir


TARGETS = ["events", "events", "driver.json", "arrow", "metrics", "remove"]


@st.composite
def damage(draw):
    """A list of (target, checkpoint index, operation) to apply to a copy of a finished run."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(TARGETS))
        out.append((target, draw(st.integers(0, 1)), draw(st.integers(0, 2**32 - 1)), draw(st.data())))
    return out


def _parsed(data: bytes):
    """The JSON in `data`, or None when an earlier mutation already broke it."""
    try:
        return json.loads(data)
    except ValueError:
        return None


def _apply(run_dir: Path, target: str, which: int, data) -> None:
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    checkpoint = checkpoints[which % len(checkpoints)]
    if target == "events" and (run_dir / "events.jsonl").exists():
        lines = (run_dir / "events.jsonl").read_bytes().split(b"\n")
        i = data.draw(st.integers(0, len(lines) - 1))
        kind = data.draw(st.sampled_from(["bytes", "json", "delete", "random"]))
        if kind == "bytes":
            lines[i] = mangle_bytes(data.draw, lines[i])
        elif kind == "json" and _parsed(lines[i]) is not None:
            lines[i] = json.dumps(data.draw(mutated_json(_parsed(lines[i])))).encode()
        elif kind == "delete":
            del lines[i]
        else:
            lines[i] = json.dumps(data.draw(json_values)).encode()
        (run_dir / "events.jsonl").write_bytes(b"\n".join(lines))
    elif target == "events":
        pass  # removed before
    elif target == "driver.json":
        path = checkpoint / "driver.json"
        if path.exists():
            state = _parsed(path.read_bytes())
            if state is None or data.draw(st.booleans()):
                path.write_bytes(mangle_bytes(data.draw, path.read_bytes()))
            else:
                path.write_text(json.dumps(data.draw(mutated_json(state))))
    elif target == "arrow":
        for path in checkpoint.glob("*.arrow"):
            path.write_bytes(mangle_bytes(data.draw, path.read_bytes()))
    elif target == "metrics":
        path = run_dir / "metrics.jsonl"
        path.write_bytes(mangle_bytes(data.draw, path.read_bytes()))
    else:
        victim = data.draw(st.sampled_from(["driver.json", "players-0.arrow", "events.jsonl"]))
        (run_dir / victim if victim == "events.jsonl" else checkpoint / victim).unlink(missing_ok=True)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(damage())
def test_a_damaged_run_directory_resumes_or_says_why(finished_run, damages):
    run_dir = _WORK / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(finished_run, run_dir)
    (run_dir / "summary.json").unlink()
    for target, which, _, data in damages:
        _apply(run_dir, target, which, data)

    if (run_dir / "events.jsonl").exists():
        try:
            RunState.from_events(read_events(str(run_dir / "events.jsonl")))
        except NewerFormatError:
            pass  # a flipped digit in `format`: refused, named

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["resume", str(run_dir), "--executor", "local", "--quiet"])
    output = out.getvalue() + err.getvalue()
    assert "Traceback" not in output
    assert code in (0, 1), output
    if code == 1:
        assert err.getvalue().startswith("error: ") or "failed" in out.getvalue(), output
    if code == 0:
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values | st.fixed_dictionaries({"type": st.sampled_from(
    ["run_started", "step_started", "shard_finished", "step_finished", "agent_errors", "record", "run_finished",
     "run_failed", "checkpoint", "shard_restarted", "models", "calls_in_flight", "shards"])},
    optional={"t": json_values, "agents": json_values, "models": json_values, "shards": json_values,
              "population": json_values, "by_model": json_values, "samples": json_values,
              "values": json_values, "status": json_values, "format": json_values, "step": json_values}),
                max_size=12))
def test_the_event_fold_takes_any_json_line(lines):
    path = _WORK / "events.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    try:
        events = read_events(str(path))
    except NewerFormatError as e:
        assert "upgrade Populace" in str(e)
        return
    assert all(isinstance(e, dict) and isinstance(e["type"], str) for e in events)
    RunState.from_events(events)


def test_a_torn_events_line_is_ended_before_a_resumed_run_appends(finished_run):
    run_dir = _WORK / "torn"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(finished_run, run_dir)
    (run_dir / "summary.json").unlink()
    with open(run_dir / "events.jsonl", "ab") as f:
        f.write(b'{"type": "step_started", "st')  # the driver died mid-write
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    events = read_events(str(run_dir / "events.jsonl"))
    assert [e for e in events if e["type"] == "run_started" and "resumed_from" in e]
    assert RunState.from_events(events).status == "finished"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(json_values | st.fixed_dictionaries({"type": st.sampled_from(
    ["run_started", "step_started", "shard_finished", "step_finished", "agent_errors", "record", "run_finished",
     "run_failed", "checkpoint", "shard_restarted", "models", "calls_in_flight", "shards", "run_paused",
     "stop_requested", "stopped_when", "model_retry", "model_failed"])},
    optional={"t": json_values, "agents": json_values, "models": json_values, "shards": json_values,
              "population": json_values, "by_model": json_values, "samples": json_values, "count": json_values,
              "values": json_values, "status": json_values, "step": json_values, "iteration": json_values,
              "seconds": json_values, "shard": json_values, "error": json_values, "calls": json_values,
              "op": json_values}),
    max_size=12))
def test_the_monitor_page_data_takes_any_event(finished_run, lines):
    """What the page reads every half second: a damaged events.jsonl never stops it."""
    from populace.runtime.monitor.data import MonitorState

    run_dir = _WORK / "monitor"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "plan.json").write_bytes((finished_run / "plan.json").read_bytes())
    (run_dir / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    state = MonitorState(str(run_dir))
    state.poll()
    state.step_rows(), state.eta(), state.rates(), state.model_rows(), state.cost()
    state.cluster_rows(), state.node_rows(), state.metric_series()
