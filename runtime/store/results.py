"""A run directory's results as pandas DataFrames: what `populace.run` and `populace.load` return.

In: the path of a run directory (finished, failed, stopped or still going). Out: a RunResults whose
attributes read the files lazily, each once: `summary` and `status`, `metrics` (the default
records table), `records` (every table by name), `asks` (each ask's answers by output name, with
the loop variables as columns), `agents` (snapshots by population), `personas`, `failures` and
`events`. Nothing is computed here that the run did not write; the files stay the source.
"""
from __future__ import annotations

import functools
import json
import os


class RunResults:
    def __init__(self, run_dir: str):
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"no run directory at {run_dir}")
        self.run_dir = run_dir

    def __repr__(self) -> str:
        s = self.summary
        return (f"<populace run {self.run_dir}: {s.get('status', '?')}, {s.get('steps', 0)} steps, "
                f"{s.get('calls', 0):,} calls, tables {sorted(self.records)}>")

    def path(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    # ---------------------------------------------------------------- the run
    @functools.cached_property
    def summary(self) -> dict:
        try:
            with open(self.path("summary.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}  # a run in progress (or whose driver died) has none yet

    @property
    def status(self) -> str:
        return self.summary.get("status", "running or interrupted")

    @functools.cached_property
    def failures(self) -> dict:
        """Per ask with failed answers: counts and the first distinct errors (failures.json)."""
        try:
            with open(self.path("failures.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"steps": []}

    @functools.cached_property
    def events(self):
        import pandas as pd

        from .events import read_events

        return pd.DataFrame(read_events(self.path("events.jsonl")))

    # ---------------------------------------------------------------- tables
    @functools.cached_property
    def records(self) -> dict:
        """Every records table by name (`metrics`, and each `record "name"`); histograms as `table.item`."""
        import pandas as pd

        folder = self.path("records")
        if not os.path.isdir(folder):
            return {}
        return {name[:-8]: pd.read_parquet(os.path.join(folder, name))
                for name in sorted(os.listdir(folder)) if name.endswith(".parquet")}

    @property
    def metrics(self):
        """The records of the unnamed `record` statements (an empty DataFrame when there were none)."""
        import pandas as pd

        return self.records.get("metrics", pd.DataFrame())

    @functools.cached_property
    def asks(self) -> dict:
        """Each ask's answers by its output name (`guess`), one row per agent and iteration; the loop
        variables are columns (read from the hive folders)."""
        import pandas as pd

        folder = self.path("asks")
        if not os.path.isdir(folder):
            return {}
        return {name[4:] if name.startswith("ask.") else name: pd.read_parquet(os.path.join(folder, name))
                for name in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, name))}

    @functools.cached_property
    def agents(self) -> dict:
        """Snapshots (`snapshot POP`) by population: agent, kind, state and answers per iteration."""
        import pandas as pd

        folder = self.path("agents")
        if not os.path.isdir(folder):
            return {}
        return {name: pd.read_parquet(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                if os.path.isdir(os.path.join(folder, name))}

    @functools.cached_property
    def personas(self):
        """The personas (one table; with several populations, a dict by population)."""
        import pandas as pd

        if os.path.exists(self.path("personas.parquet")):
            return pd.read_parquet(self.path("personas.parquet"))
        folder = self.path("personas")
        if os.path.isdir(folder):
            return {name[:-8]: pd.read_parquet(os.path.join(folder, name))
                    for name in sorted(os.listdir(folder)) if name.endswith(".parquet")}
        return pd.DataFrame()


def load(run_dir: str) -> RunResults:
    """The results of an existing run directory."""
    return RunResults(run_dir)
