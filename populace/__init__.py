"""Populace from Python: run a scenario and get its results as pandas DataFrames.

    import populace
    run = populace.run("examples/guess_two_thirds.pop", params={"players": 1000})
    run.metrics            # the records, one row per `record` executed
    run.asks["guess"]      # every answer, with the loop variables as columns
    populace.load("runs/guess_two_thirds-20261205-120000")   # a run made by the CLI

In: a scenario file and what the command line would take (params as --set, seed, executor, run
directory, ...). Out: a RunResults (runtime/store/results.py) over the same run directory the CLI
writes. A scenario with errors raises ScenarioError, whose text is the diagnostics as the CLI
prints them; a run that cannot start raises RunError. A run that fails returns its results with
`status == "failed"` and `summary["error"]`: what it wrote is kept.
"""
from __future__ import annotations

import os

from populace.runtime.store.results import RunResults, load

__all__ = ["RunError", "RunResults", "ScenarioError", "load", "run"]


class ScenarioError(Exception):
    """The scenario does not compile: the message holds every diagnostic, rendered."""


class RunError(Exception):
    """The run cannot start (an API key not set, a module that does not import, ...)."""


def run(path: str, params: dict | None = None, *, seed: int | None = None, executor: str = "local",
        run_dir: str | None = None, shards: int | None = None, address: str | None = None,
        cache: str | None = None, replay: bool = False, max_failed: float | None = None,
        checkpoint_every: int | None = None, progress: bool = False) -> RunResults:
    """Compile and run the scenario at `path`; its results (the run directory stays on disk).

    `params` are the scenario's params by name (`{"players": 1000}`, like `--set players=1000`);
    `executor` is "local" (one process: a notebook's default) or "ray" (a local Ray, or the cluster
    at `address` / RAY_ADDRESS). Both give the same numbers. `progress=True` shows the CLI's live panel.
    """
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.dsl.diagnostics import DiagnosticError
    from populace.runtime.engine.preflight import unsupported
    from populace.runtime.engine.run import run_plan

    overrides = [f"{name}={_text(value)}" for name, value in (params or {}).items()]
    try:
        compiled = compile_file(path, overrides)
    except DiagnosticError as e:
        raise ScenarioError(e.render()) from None
    raw = compiled.plan
    if seed is not None:
        from populace.compiler.plan import plan_hash

        raw = dict(raw, scenario=dict(raw["scenario"], seed=int(seed)))
        raw["plan_hash"] = plan_hash(raw)
    plan = plan_from_dict(raw)
    folder = os.path.dirname(os.path.abspath(path))
    problems = unsupported(plan, replay=replay, folder=folder)
    if problems:
        raise RunError("; ".join(problems))
    display = None
    if progress:
        from populace.cli.progress import Progress

        display = Progress()
    summary = run_plan(plan, executor=executor, shards=shards, address=address, run_dir=run_dir, display=display,
                       cache=cache, replay=replay, checkpoint_every=checkpoint_every, folder=folder,
                       max_failed=max_failed)
    return RunResults(summary["run_dir"])


def _text(value) -> str:
    """A param value as `--set` would take it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        import json

        return json.dumps(value)
    return str(value)
