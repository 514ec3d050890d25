"""The run's records as tables: records/<table>.parquet, one per named table (`metrics` by default).

In: a run directory's metrics.jsonl (one JSON object per executed `record`: its loop variables,
its named values, the step id and, for a named record, `table`) and the typed plan (each record
step's items and their types). Out: one Parquet file per table, its columns the loop variables
in loop order, then the items with their declared types; a histogram item goes to a table of its
own, `records/<table>.<item>.parquet`, one row per bin (the loop variables, `bin_low`, `bin_high`,
`count`), so the bins are numbers to plot, not text. Written at the end of a run (and of a resume).
"""
from __future__ import annotations

import json
import os
import re

import pyarrow as pa

from populace.compiler.plan import steps as s

from .rundir import replacing
from .tables import arrow_type

DEFAULT_TABLE = "metrics"


def record_steps(plan) -> dict[str, s.Record]:
    return {step.id: step for step in plan.steps() if isinstance(step, s.Record)}


def table_of(step: s.Record) -> str:
    return getattr(step, "table", None) or DEFAULT_TABLE


def loop_variables(plan) -> dict[str, list[str]]:
    """record step id -> the loop variables around it, outermost first."""
    out: dict[str, list[str]] = {}

    def walk(steps, names):
        for step in steps:
            if isinstance(step, s.Record):
                out[step.id] = list(names)
            inner = names + ([step.var or "i"] if isinstance(step, s.Repeat) else [step.var] if isinstance(step, s.For) else [])
            for block in s.children(step):
                walk(block, inner)

    walk(plan.workflow, [])
    return out


def is_histogram(item: s.RecordItem) -> bool:
    return isinstance(item.value, dict) and item.value.get("agg") == "histogram"


def file_name(name: str) -> str:
    """A table or item name as a file name: `histogram(players.guess, bins = 10)` -> `histogram_players.guess_bins_10`."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.-]", "_", name)).strip("_.") or "value"


def read_rows(run_dir: str) -> list[dict]:
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn or damaged line: the others are still a table
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def write_tables(run_dir: str, plan) -> list[str]:
    """Write records/<table>.parquet for every table with rows; return the paths written (relative)."""
    steps, loops = record_steps(plan), loop_variables(plan)
    by_table: dict[str, list[dict]] = {}
    for row in read_rows(run_dir):
        step = steps.get(row.get("step"))
        if step is not None:
            by_table.setdefault(table_of(step), []).append(row)
    written = []
    for table, rows in sorted(by_table.items()):
        ids = list(dict.fromkeys(r["step"] for r in rows))
        items: dict[str, s.RecordItem] = {}
        for i in ids:
            for item in (*steps[i].by, *steps[i].items):  # `by` keys first: a grouped table reads key, values
                items.setdefault(item.name, item)
        # The loop variables (outermost first), then the `let` values a row also holds, as written.
        variables = list(dict.fromkeys([v for i in ids for v in loops.get(i, [])]
                                       + [k for r in rows for k in r if k not in items and k not in ("step", "table")]))
        columns: dict = {}
        for v in variables:
            columns[v] = _column([r.get(v) for r in rows], None)
        for name, item in items.items():
            if is_histogram(item):
                path = f"records/{file_name(table)}.{file_name(name)}.parquet"
                _write(run_dir, path, _bins(rows, variables, name))
                written.append(path)
            else:
                columns[name] = _column([r.get(name) for r in rows], item.type)
        columns["step"] = pa.array([r["step"] for r in rows], pa.string())
        path = f"records/{file_name(table)}.parquet"
        _write(run_dir, path, pa.table(columns))
        written.append(path)
    return written


def _bins(rows: list[dict], variables: list[str], name: str) -> pa.Table:
    out: dict[str, list] = {v: [] for v in variables}
    out.update(bin_low=[], bin_high=[], count=[])
    for r in rows:
        h = r.get(name)
        if not isinstance(h, dict) or not isinstance(h.get("counts"), list) or not isinstance(h.get("edges"), list):
            continue
        for j, count in enumerate(h["counts"]):
            for v in variables:
                out[v].append(r.get(v))
            out["bin_low"].append(float(h["edges"][j]))
            out["bin_high"].append(float(h["edges"][j + 1]))
            out["count"].append(int(count))
    return pa.table({k: _column(v, {"kind": "float"} if k.startswith("bin_") else {"kind": "int"} if k == "count" else None)
                     for k, v in out.items()})


def _column(values: list, ty: dict | None) -> pa.Array:
    """Values of one column with the declared type; undeclared (loop variables) as pyarrow infers."""
    if ty is not None and ty.get("kind") not in ("any", "none", None):
        try:
            return pa.array(values, arrow_type(ty) if ty["kind"] != "enum" else pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass  # e.g. an int column that holds a missing value as NaN: let pyarrow decide
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v, sort_keys=True) for v in values], pa.string())


def _write(run_dir: str, path: str, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    with replacing(os.path.join(run_dir, path), ".parquet") as tmp:
        pq.write_table(table, tmp)
