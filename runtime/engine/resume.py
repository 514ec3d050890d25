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

from populace.runtime.store.checkpoints import checkpoints, checkpoints_written
from populace.runtime.models.budget import format_usd
from populace.runtime.store.events import read_events
from populace.runtime.store.fold import RunState
from populace.runtime.store.rundir import NewerFormatError, RunDir, RunDirBusy, lock

from .executors import make_executor
from .preflight import unsupported


class ResumeError(Exception):
    pass


def resume_run(run_dir: str, executor: str | None = None, address: str | None = None, display=None,
               listener=None, cache: str | None = None, checkpoint_every: int | None = None,
               budget: float | None = None, workers: int | None = None) -> dict:
    """Continue the run in `run_dir` from its newest usable checkpoint; ResumeError says why not.
    `executor`: where the shards go; None keeps the one the run started with. `budget`: the dollars
    the whole run may spend, what was spent before included; None keeps the run's budget, if any.
    `workers`: the local executor's worker processes (as run_plan's)."""
    held: dict = {}  # the lock's fd until the run directory takes it over (and releases it when done)
    try:
        if os.path.isdir(run_dir):
            held["fd"] = lock(run_dir)  # before anything starts: another driver may still be writing here
        return _resume(run_dir, executor, address, display, listener, cache, checkpoint_every, held, budget, workers)
    except RunDirBusy as e:
        raise ResumeError(str(e)) from None
    finally:
        if "fd" in held:
            os.close(held.pop("fd"))


def _resume(run_dir, executor, address, display, listener, cache, checkpoint_every, held, budget=None,
            workers=None) -> dict:
    from .run import model_environment

    try:
        plan = read_plan(os.path.join(run_dir, "plan.json"))
    except PlanError as e:
        raise ResumeError(f"{run_dir} cannot be resumed: {e}") from None
    finished = _finished(run_dir)
    if finished:
        raise ResumeError(f"{run_dir} {finished}; there is nothing to resume (run the scenario again for a new run)")
    folder, started_on, paid, keep = None, None, RunState(), None
    try:
        if os.path.exists(os.path.join(run_dir, "events.jsonl")):
            events = read_events(os.path.join(run_dir, "events.jsonl"))  # a newer format raises
            starts = [e for e in events if e["type"] == "run_started"]
            folder = next((e["scenario_dir"] for e in starts if isinstance(e.get("scenario_dir"), str)), None)
            started_on = next((e["executor"] for e in starts if e.get("executor") in ("local", "ray")), None)
            keep = next((e["keep_checkpoints"] for e in starts if isinstance(e.get("keep_checkpoints"), int)), None)
            paid = RunState.from_events(events)
    except NewerFormatError as e:
        raise ResumeError(f"{run_dir} cannot be resumed: {e}") from None
    spent = paid.cost_usd or 0.0  # every call paid so far, the steps to be redone included
    if budget is None and paid.stopped_by == "budget" or budget is not None and spent >= budget:
        limit = budget if budget is not None else paid.budget_usd or 0.0
        raise ResumeError(f"{run_dir} has spent {format_usd(spent)} of {'its' if budget is None else 'a'} "
                          f"{format_usd(limit)} budget; resume it with a larger one, such as "
                          f"--budget {_more(spent)}usd (what was spent counts)")
    budget = paid.budget_usd if budget is None else budget  # the run's own budget holds until one is given
    executor = executor or started_on or "ray"  # a local run resumes locally: it may have no cluster at all
    if workers is not None and executor != "local":
        raise ResumeError(f"{run_dir} resumes on {executor}, where --workers does not apply (every shard is an actor "
                          "of its own); leave it out, or add --executor local")
    problems = unsupported(plan, folder=folder, budget=budget)
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
        options = {"cache": os.path.abspath(cache or _manifest_cache(run_dir) or os.path.join(run_dir, "cache.sqlite")),
                   "replay": False,
                   "environment": model_environment(plan), "restore": directory,
                   "checkpoints": os.path.abspath(os.path.join(run_dir, "checkpoints")),
                   "restartable": plan.settings.get("checkpoint_every", 1) == 1, "scenario_dir": folder,
                   "budget": {"limit": budget, "spent": spent} if budget is not None else None}
        try:
            ex = make_executor(executor, plan, address=address, options=options, ranges=ranges, workers=workers)
        except Exception as e:  # a corrupt shard file: try the checkpoint before
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, NewerFormatError) or "NewerFormatError" in str(cause):
                raise ResumeError(f"{run_dir} cannot be resumed: {_first_line(cause)}") from None
            errors.append(f"{os.path.basename(directory)}: {cause}")
            continue
        return _finish(plan, ex, run_dir, state, display, listener, folder, checkpoint_every, held, budget, keep)
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


def _manifest_cache(run_dir: str) -> str | None:
    """The response cache the run used (`--cache`, or a branch's parent's), from its manifest."""
    from populace.runtime.store.manifest import read

    try:
        cache = (read(run_dir) or {}).get("cache")
    except (OSError, ValueError):
        return None
    return cache if isinstance(cache, str) and os.path.exists(cache) else None


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


def _finish(plan, ex, run_dir, state, display, listener, folder=None, checkpoint_every=None, held=None,
            budget=None, keep=None) -> dict:
    from .run import drive

    directory = RunDir(run_dir, lock_fd=held.pop("fd", None) if held is not None else None)
    if keep is not None:
        directory.keep_checkpoints = keep  # as the run started: a run kept for branching stays so
    return drive(plan, ex, directory, display, listener, resume=state, folder=folder, checkpoint_every=checkpoint_every,
                 budget=budget)


def _more(spent: float) -> str:
    """A round budget above `spent`, for the hint: 3.2 -> 7, 41 -> 82."""
    import math

    target = max(spent * 2, spent + 1)
    return f"{math.ceil(target):g}"
