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

from .driver import unsupported
from .executors import make_executor
from .rundir import RunDir


class ResumeError(Exception):
    pass


def checkpoints(run_dir: str, plan) -> list[tuple[str, dict]]:
    """Complete checkpoints, newest first: (directory, driver state)."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root), reverse=True):
        directory = os.path.join(root, name)
        try:
            with open(os.path.join(directory, "driver.json"), encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue  # torn or missing: not a checkpoint
        if state.get("plan_hash") != plan.plan_hash:
            continue
        files = [f"{pop}-{i}.arrow" for pop, ranges in state["ranges"].items() for i in range(len(ranges))]
        if all(os.path.exists(os.path.join(directory, f)) for f in files):
            out.append((os.path.abspath(directory), state))
    return out


def resume_run(run_dir: str, executor: str = "ray", address: str | None = None, quiet: bool = True,
               listener=None, cache: str | None = None) -> dict:
    from .run import model_environment

    try:
        plan = read_plan(os.path.join(run_dir, "plan.json"))
    except PlanError as e:
        raise ResumeError(f"{run_dir} cannot be resumed: {e}") from None
    problems = unsupported(plan)
    if problems:
        raise ResumeError("; ".join(problems))
    candidates = checkpoints(run_dir, plan)
    errors = []
    for directory, state in candidates:
        ranges = {pop: [tuple(r) for r in rs] for pop, rs in state["ranges"].items()}
        options = {"cache": os.path.abspath(cache or os.path.join(run_dir, "cache.sqlite")), "replay": False,
                   "environment": model_environment(plan), "restore": directory,
                   "checkpoints": os.path.abspath(os.path.join(run_dir, "checkpoints")),
                   "restartable": plan.settings.get("checkpoint_every", 1) == 1}
        try:
            ex = make_executor(executor, plan, address=address, options=options, ranges=ranges)
        except Exception as e:  # a corrupt shard file: try the checkpoint before
            cause = getattr(e, "cause", None) or e
            errors.append(f"{os.path.basename(directory)}: {cause}")
            continue
        return _finish(plan, ex, run_dir, state, quiet, listener)
    if errors:
        raise ResumeError("no usable checkpoint: " + "; ".join(errors))
    raise ResumeError(f"{run_dir} has no checkpoint to resume from; run the scenario again "
                      "(with --cache pointing at its cache.sqlite, so answers already paid for are reused)")


def _finish(plan, ex, run_dir, state, quiet, listener) -> dict:
    from .run import drive

    return drive(plan, ex, RunDir(run_dir), quiet, listener, resume=state)
