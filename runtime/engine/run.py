"""Run a plan end to end: executor, run directory, driver.

In: a typed Plan and run options. Out: the run's summary dict (also in summary.json). Used by the
CLI, the Python API and tests; the same code path for the local and the ray executor. `display`
(the CLI's live panel) is a context manager that is also called with every event.
"""
from __future__ import annotations

import contextlib
import os

from populace.runtime.store import manifest
from populace.runtime.store.rundir import RunDir, new_run_dir

from .executors import make_executor
from .interpreter import Driver
from .preflight import used_models


def run_plan(plan, executor: str = "ray", shards: int | None = None, address: str | None = None,
             run_dir: str | None = None, display=None, listener=None, cache: str | None = None,
             replay: bool = False, checkpoint_every: int | None = None, should_stop=None,
             folder: str | None = None, max_failed: float | None = None, prompts: dict | None = None,
             budget: float | None = None, keep_checkpoints: int | None = None,
             workers: int | None = None) -> dict:
    """`cache`: the response cache (default: cache.sqlite in the run directory); `replay`: refuse
    any model call whose reply is not in the cache; `should_stop()`: asked between steps, True
    ends the run as stopped (a sweep's Ctrl-C reaches runs in other threads this way); `folder`: the
    scenario's folder, where its own Python (extensions, python models) is imported from; `max_failed`:
    the share of failed answers in one ask above which the run fails (default: the scenario's, 5%);
    `prompts`: whose exact requests to keep under prompts/ ({"share": 0.01} a sample of agents, or
    {"agents": [17], "step": "step:ask.guess", "iteration": "[round=3]"}); `budget`: dollars the run
    may spend (models/budget.py), else the scenario's `budget`, else no limit; `keep_checkpoints`: how
    many of the newest checkpoints to keep (default 2; 0 keeps every one, for `populace branch`);
    `workers`: the local executor's worker processes (None: one per core from 20,000 agents; 0: none)."""
    budget = plan.settings.get("budget") if budget is None else budget
    directory = RunDir(run_dir or new_run_dir(plan.scenario.name))
    if keep_checkpoints is not None:
        directory.keep_checkpoints = keep_checkpoints
    every = plan.settings.get("checkpoint_every", 1) if checkpoint_every is None else checkpoint_every
    options = {"cache": os.path.abspath(cache or directory.file("cache.sqlite")), "replay": replay,
               "environment": model_environment(plan),
               "checkpoints": os.path.abspath(directory.file("checkpoints")), "restartable": every == 1,
               "scenario_dir": folder, "prompts": prompts,
               "budget": {"limit": budget, "spent": 0.0} if budget is not None else None}
    try:
        ex = make_executor(executor, plan, shards, address, options, workers=workers)
    except BaseException:
        directory.close()
        raise
    try:
        manifest.start(directory, plan, ex.name, {p: len(r) for p, r in ex.ranges.items()}, options["cache"], budget)
    except BaseException:
        ex.close()
        directory.close()
        raise
    return drive(plan, ex, directory, display, listener, checkpoint_every=checkpoint_every, should_stop=should_stop,
                 folder=folder, max_failed=max_failed, budget=budget)


def drive(plan, ex, directory: RunDir, display=None, listener=None, resume: dict | None = None,
          checkpoint_every: int | None = None, should_stop=None, folder: str | None = None,
          max_failed: float | None = None, budget: float | None = None) -> dict:
    """Run (or, with `resume`, continue) the driver; close the executor and files."""
    try:
        with display if display is not None else contextlib.nullcontext():
            def listen(event):
                if display is not None:
                    display(event)
                if listener:
                    listener(event)

            summary = Driver(plan, ex, directory, listen, should_stop=should_stop,
                             checkpoint_every=checkpoint_every, folder=folder, max_failed=max_failed,
                             budget=budget).run(resume=resume)
            manifest.finish(directory, summary)
            return summary
    finally:
        ex.close()
        directory.close()


# Environment variables an LLM client reads besides the named key variable.
_PROVIDER_ENV = {"anthropic": ("ANTHROPIC_BASE_URL",), "openai": ("OPENAI_BASE_URL",)}


def model_environment(plan) -> dict:
    """The variables the shards' model clients need (API keys, base URLs), taken from this process.

    Shards on other machines (or started before the variable was set) do not share this process's
    environment, so the values travel with the shard's constructor arguments. They are never
    written to the run directory, the plan or an event.
    """
    out = {}
    for name in used_models(plan):
        model = plan.models[name]
        for var in (model.settings.get("api_key_env"),) + _PROVIDER_ENV.get(model.provider, ()):
            if var and var in os.environ:
                out[var] = os.environ[var]
    return out
