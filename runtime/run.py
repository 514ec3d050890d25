"""Run a plan end to end: executor, run directory, driver, progress.

In: a Plan and run options. Out: the run's summary dict (also in summary.json). Used by the CLI
and by tests; the same code path for the local and the ray executor.
"""
from __future__ import annotations

from .driver import Driver
from .executors import make_executor
from .progress import Progress
from .rundir import RunDir, new_run_dir


def run_plan(plan, executor: str = "ray", shards: int | None = None, address: str | None = None,
             run_dir: str | None = None, quiet: bool = True, listener=None, cache: str | None = None,
             replay: bool = False) -> dict:
    """`cache`: the response cache (default: cache.sqlite in the run directory); `replay`: refuse
    any model call whose reply is not in the cache."""
    import os

    directory = RunDir(run_dir or new_run_dir(plan.scenario["name"]))
    options = {"cache": os.path.abspath(cache or directory.file("cache.sqlite")), "replay": replay}
    ex = make_executor(executor, plan, shards, address, options)
    try:
        with Progress(quiet=quiet) as progress:
            def listen(event):
                progress(event)
                if listener:
                    listener(event)

            return Driver(plan, ex, directory, listen).run()
    finally:
        ex.close()
        directory.close()
