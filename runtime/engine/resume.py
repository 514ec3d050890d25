"""Resume a run whose driver died: reload its plan and last good checkpoint, and finish it.

In: a run directory (plan.json, checkpoints/NNNNNN/{driver.json, <population>-<shard>.arrow}, the
response cache). Out: the finished run in the same directory and its summary. Shards are rebuilt
with the checkpoint's layout and state; model calls already made are answered from the run's
response cache, so nothing is paid twice. A damaged checkpoint falls back to the one before it.
"""
from __future__ import annotations

import json
import os

from populace.compiler.plan import PlanError, read_plan

from .interpreter import unsupported
from populace.runtime.store.events import read_events
from .executors import make_executor
from populace.runtime.store.rundir import NewerFormatError, RunDir, RunDirBusy, check_format, lock


class ResumeError(Exception):
    pass


def checkpoints(run_dir: str, plan) -> list[tuple[str, dict]]:
    """Complete checkpoints, newest first: (directory, driver state). A damaged one is skipped; one
    written by a newer Populace raises NewerFormatError (it is not damaged: we cannot read it)."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root), reverse=True):
        directory = os.path.join(root, name)
        path = os.path.join(directory, "driver.json")
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue  # torn or missing: not a checkpoint
        if isinstance(state, dict):
            check_format(state.get("format"), path, state.get("populace_version"))
        if not _usable(state, plan):
            continue
        files = [f"{pop}-{i}.arrow" for pop, ranges in state["ranges"].items() for i in range(len(ranges))]
        if all(os.path.exists(os.path.join(directory, f)) for f in files):
            out.append((os.path.abspath(directory), state))
    return out


def checkpoints_written(run_dir: str) -> bool:
    """Has this run written a complete checkpoint (is there anything to resume from)?"""
    root = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(root) and any(os.path.exists(os.path.join(root, d, "driver.json")) for d in os.listdir(root))


def _usable(state, plan) -> bool:
    """driver.json of this plan with every field the driver reads, of the right type (a hand edit or
    flipped bytes that still parse as JSON make it damaged, not a crash)."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(state, dict) or state.get("plan_hash") != plan.plan_hash:
        return False
    types = {"seq": int, "frames": list, "env": dict, "totals": dict, "by_model": dict, "metrics_lines": int,
             "ranges": dict, "shard_steps": int}
    if not all(isinstance(state.get(k), t) and not isinstance(state.get(k), bool) for k, t in types.items()):
        return False
    if not all(isinstance(f, dict) and whole(f.get("index")) and isinstance(f.get("variables"), dict)
               and isinstance(f.get("label"), str) for f in state["frames"]) or not state["frames"]:
        return False
    if set(state["env"]) != set(plan.environments) or not all(isinstance(v, dict) for v in state["env"].values()):
        return False
    if set(state["ranges"]) != set(plan.populations):
        return False
    for pop, ranges in state["ranges"].items():
        if not isinstance(ranges, list) or not ranges:
            return False
        bounds = [0]
        for r in ranges:
            if not (isinstance(r, list) and len(r) == 2 and whole(r[0]) and whole(r[1]) and r[0] == bounds[-1] < r[1]):
                return False
            bounds.append(r[1])
        if bounds[-1] != plan.populations[pop].size:
            return False
    keys = ("calls", "tokens_in", "tokens_out", "errors", "agents", "steps")
    if not all(whole(state["totals"].get(k)) for k in keys) or state["metrics_lines"] < 0:
        return False
    # Read again in the summary, outside the run's error handling: a wrong type there would be a traceback.
    if not all(name in plan.models and isinstance(m, dict) and all(whole(m.get(k)) for k in keys[:3])
               for name, m in state["by_model"].items()):
        return False
    elapsed, latencies = state.get("elapsed", 0.0), state.get("latencies", {})
    return (isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and isinstance(latencies, dict)
            and all(_latencies(v) for v in latencies.values()))


def _latencies(saved) -> bool:
    """A model's latencies: a histogram (bucket number as text -> calls), or a list of seconds (older)."""
    if isinstance(saved, list):
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in saved)
    return isinstance(saved, dict) and all(
        isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(n, int) and not isinstance(n, bool)
        for k, n in saved.items())


def resume_run(run_dir: str, executor: str = "ray", address: str | None = None, quiet: bool = True,
               listener=None, cache: str | None = None, checkpoint_every: int | None = None) -> dict:
    """Continue the run in `run_dir` from its newest usable checkpoint; ResumeError says why not."""
    held: dict = {}  # the lock's fd until the run directory takes it over (and releases it when done)
    try:
        if os.path.isdir(run_dir):
            held["fd"] = lock(run_dir)  # before anything starts: another driver may still be writing here
        return _resume(run_dir, executor, address, quiet, listener, cache, checkpoint_every, held)
    except RunDirBusy as e:
        raise ResumeError(str(e)) from None
    finally:
        if "fd" in held:
            os.close(held.pop("fd"))


def _resume(run_dir, executor, address, quiet, listener, cache, checkpoint_every, held) -> dict:
    from .run import model_environment

    try:
        plan = read_plan(os.path.join(run_dir, "plan.json"))
    except PlanError as e:
        raise ResumeError(f"{run_dir} cannot be resumed: {e}") from None
    finished = _finished(run_dir)
    if finished:
        raise ResumeError(f"{run_dir} {finished}; there is nothing to resume (run the scenario again for a new run)")
    folder = None
    try:
        if os.path.exists(os.path.join(run_dir, "events.jsonl")):
            events = read_events(os.path.join(run_dir, "events.jsonl"))  # a newer format raises
            folder = next((e.get("scenario_dir") for e in events if e["type"] == "run_started"
                           and isinstance(e.get("scenario_dir"), str)), None)
    except NewerFormatError as e:
        raise ResumeError(f"{run_dir} cannot be resumed: {e}") from None
    problems = unsupported(plan, folder=folder)
    if problems:
        raise ResumeError("; ".join(problems))
    try:
        candidates = checkpoints(run_dir, plan)
    except NewerFormatError as e:
        raise ResumeError(f"{run_dir} cannot be resumed: {e}") from None
    errors = []
    damaged = _damaged_metrics_line(run_dir)
    for directory, state in candidates:
        if damaged is not None and damaged < state.get("metrics_lines", 0):
            # that record cannot be made again from this checkpoint: an older one may still hold it
            errors.append(f"{os.path.basename(directory)}: metrics.jsonl line {damaged + 1} is damaged")
            continue
        ranges = {pop: [tuple(r) for r in rs] for pop, rs in state["ranges"].items()}
        options = {"cache": os.path.abspath(cache or os.path.join(run_dir, "cache.sqlite")), "replay": False,
                   "environment": model_environment(plan), "restore": directory,
                   "checkpoints": os.path.abspath(os.path.join(run_dir, "checkpoints")),
                   "restartable": plan.settings.get("checkpoint_every", 1) == 1, "scenario_dir": folder}
        try:
            ex = make_executor(executor, plan, address=address, options=options, ranges=ranges)
        except Exception as e:  # a corrupt shard file: try the checkpoint before
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, NewerFormatError) or "NewerFormatError" in str(cause):
                raise ResumeError(f"{run_dir} cannot be resumed: {_first_line(cause)}") from None
            errors.append(f"{os.path.basename(directory)}: {cause}")
            continue
        return _finish(plan, ex, run_dir, state, quiet, listener, folder, checkpoint_every, held)
    again = "run the scenario again"
    if os.path.exists(os.path.join(run_dir, "cache.sqlite")):
        again += " (with --cache pointing at its cache.sqlite, so answers already paid for are reused)"
    if errors:
        raise ResumeError("no usable checkpoint: " + "; ".join(errors) + f"; {again}")
    raise ResumeError(f"{run_dir} has no checkpoint to resume from; {again}")


def _damaged_metrics_line(run_dir: str) -> int | None:
    """The index of the first complete metrics.jsonl line that is not a JSON object, or None."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
            for i, line in enumerate(f):
                if not line.endswith(b"\n"):
                    return None  # a torn last line: dropped on resume anyway
                try:
                    ok = isinstance(json.loads(line), dict)
                except ValueError:
                    ok = False
                if not ok:
                    return i
    except OSError:
        return None
    return None


def _finished(run_dir: str) -> str | None:
    """Why this run needs no resume (its summary says it finished), or None."""
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return "finished already" if isinstance(summary, dict) and summary.get("status") == "finished" else None


def _first_line(error) -> str:
    """A shard's error as one line: Ray's actor errors carry the creation traceback after it."""
    text = str(error)
    marker = "NewerFormatError: "
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _finish(plan, ex, run_dir, state, quiet, listener, folder=None, checkpoint_every=None, held=None) -> dict:
    from .run import drive

    directory = RunDir(run_dir, lock_fd=held.pop("fd", None) if held is not None else None)
    return drive(plan, ex, directory, quiet, listener, resume=state, folder=folder, checkpoint_every=checkpoint_every)
