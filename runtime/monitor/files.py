"""The monitor's reads of the run's Parquet and Arrow files: answers, agents, personas.

In: paths of ask files (asks/<step>/<iteration>/part-*.parquet), persona files and checkpoints in
a run directory, and a MonitorState for `find_agent`. Out: a histogram or category counts of an
ask's answers (`distribution`), one agent's persona, latest answers, state and memory
(`find_agent`), pages of personas with filters (`PersonaPages`). A 1,000,000-agent run stays
cheap: one column at a time, an agent by row-group statistics, a persona page by one row group.
A damaged file gives a one-line message (`unreadable`), never an exception the page sees.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

if TYPE_CHECKING:  # only for the annotation: data.py imports nothing of this module
    from .data import MonitorState

PAGE_ROWS = 20

UNREADABLE = (OSError, ValueError, KeyError, pa.ArrowException)  # a truncated or hand-edited file


def unreadable(path: str, error: BaseException, run_dir: str | None = None) -> str:
    """`asks/ask.guess/round=3.parquet cannot be read: <reason>`: one line for the panel that failed."""
    name = os.path.relpath(path, run_dir) if run_dir else os.path.basename(path)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{name} cannot be read: {reason}"


def distribution(path: str, bins: int = 20, top: int = 20) -> dict:
    """The `value` column of one ask file as a histogram (numbers) or category counts (the rest).

    Reads that one column only (8 bytes an agent for numbers); records and lists are not charted.
    A file that cannot be read gives `{"kind": "error", "error": ...}`.
    """
    try:
        column = pq.read_table(path, columns=["value"]).column("value")
    except UNREADABLE as e:
        run_dir = path[:path.rindex(os.sep + "asks" + os.sep)] if os.sep + "asks" + os.sep in path else None
        return {"kind": "error", "error": unreadable(path, e, run_dir),
                "missing": 0, "count": 0}
    missing = column.null_count
    present = pc.drop_null(column)
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if len(present) == 0:
            return {"kind": "histogram", "edges": [], "counts": [], "missing": missing, "count": 0}
        import numpy as np

        values = present.to_numpy()
        if pa.types.is_floating(kind):
            values = values[np.isfinite(values)]
        low, high = float(values.min()), float(values.max())
        if pa.types.is_integer(kind) and high - low + 1 <= bins:
            edges = np.arange(low, high + 2) - 0.5  # one bar per integer
        else:
            edges = np.linspace(low, high if high > low else low + 1, bins + 1)
        counts, edges = np.histogram(values, bins=edges)
        return {"kind": "histogram", "edges": [float(x) for x in edges], "counts": [int(c) for c in counts],
                "integer": pa.types.is_integer(kind), "missing": missing, "count": len(values)}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind) or pa.types.is_dictionary(kind):
        counted = pc.value_counts(present).to_pylist()
        counted.sort(key=lambda item: (-item["counts"], str(item["values"])))
        rest = sum(item["counts"] for item in counted[top:])
        labels = [str(item["values"]) for item in counted[:top]] + (["(other)"] if rest else [])
        counts = [item["counts"] for item in counted[:top]] + ([rest] if rest else [])
        return {"kind": "categories", "labels": labels, "counts": counts, "missing": missing, "count": len(present)}
    return {"kind": "none", "type": str(kind), "missing": missing, "count": len(present)}


def persona_files(run_dir: str) -> dict:
    """population (or "" for the single personas.parquet) -> path."""
    out = {}
    single = os.path.join(run_dir, "personas.parquet")
    if os.path.exists(single):
        out[""] = single
    folder = os.path.join(run_dir, "personas")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".parquet"):
                out[name[:-8]] = os.path.join(folder, name)
    return out


def _rows(table: pa.Table) -> list[dict]:
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def read_agent(path: str, agent: int) -> dict | None:
    """One agent's row; row-group statistics on `agent` skip every other shard's rows."""
    table = pq.read_table(path, filters=[("agent", "=", agent)])
    rows = _rows(table)
    return rows[0] if rows else None


def find_agent(state: MonitorState, agent: int, population: str = "", last: int = 5) -> dict:
    """Persona row and the latest `last` answers (prompt hash, reply, value, error) of one agent."""
    persona, problems = None, []
    path = persona_files(state.run_dir).get(population) or next(iter(persona_files(state.run_dir).values()), None)
    if path:
        try:
            persona = read_agent(path, agent)
        except UNREADABLE as e:
            problems.append(unreadable(path, e, state.run_dir))
    answers = []
    for step, iteration, ask_path in reversed(state.ask_files()):
        if len(answers) >= last:
            break
        if not ask_path or not os.path.exists(ask_path):
            continue
        try:
            row = read_agent(ask_path, agent)
        except UNREADABLE as e:
            problems.append(unreadable(ask_path, e, state.run_dir))
            continue
        if row is not None:
            row.pop("agent", None)
            answers.append(dict(row, step=step, iteration=iteration))
    prompts = {}
    for answer in answers:
        if answer["step"] not in prompts:
            step = state._find(answer["step"])
            prompts[answer["step"]] = prompt_text(step) if step else ""
    try:
        checkpointed = checkpointed_agent(state.run_dir, agent, population)
    except UNREADABLE as e:
        checkpointed = None
        problems.append(str(e) if "cannot be read" in str(e) else f"checkpoint cannot be read: {e}")
    return {"agent": agent, "persona": persona, "answers": answers, "prompts": prompts, "problems": problems,
            "state": checkpointed["state"] if checkpointed else None,
            "memory": checkpointed["memory"] if checkpointed else None,
            "checkpoint": checkpointed["checkpoint"] if checkpointed else None}


def checkpointed_agent(run_dir: str, agent: int, population: str = "") -> dict | None:
    """An agent's state, latest answers and memory as of the newest complete checkpoint (the run
    directory holds no other per-agent state): read from the one shard file that holds the agent."""
    import pyarrow.ipc as ipc

    from populace.runtime.store.checkpoints import latest_checkpoint

    directory = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if directory is None:
        return None
    damaged = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".arrow") or (population and not name.startswith(population + "-")):
            continue
        try:
            with pa.memory_map(os.path.join(directory, name)) as source:
                table = ipc.open_file(source).read_all()
        except UNREADABLE as e:
            damaged.append(unreadable(os.path.join(directory, name), e, run_dir))
            continue
        ids = table.column("agent")
        if not len(ids) or not ids[0].as_py() <= agent <= ids[-1].as_py():
            continue
        row = {k: v[0] for k, v in table.slice(agent - ids[0].as_py(), 1).to_pydict().items()}
        values = {k[2:]: _plain(v) for k, v in row.items() if k.startswith("v:")}
        slots = len([k for k in row if k.startswith("m:")]) // 2
        count = row.get("count", 0) or 0
        memory = []
        for j in range(max(0, count - slots), count):
            slot = (j % slots) * 2
            memory.append({"role": "user", "text": row[f"m:{slot}"]})
            if row.get(f"m:{slot + 1}") is not None:
                memory.append({"role": "assistant", "text": row[f"m:{slot + 1}"]})
        return {"checkpoint": os.path.basename(directory), "state": values, "memory": memory}
    if damaged:  # the agent may be in a shard file that cannot be read: say so rather than "no state"
        raise ValueError("; ".join(damaged))
    return None


def prompt_text(step: dict) -> str:
    """An ask's prompt template as the scenario wrote it, with `{{...}}` for what a run fills in."""
    parts = []
    for piece in step.get("prompt", {}).get("template", []):
        if isinstance(piece, str):
            parts.append(piece)
        elif "var" in piece:
            parts.append("{{" + piece["var"] + "}}")
        elif "env" in piece:
            parts.append("{{" + f"{piece['env']}.{piece['field']}" + "}}")
        elif "col" in piece or "persona" in piece:
            parts.append("{{" + str(piece.get("col") or piece.get("persona")) + "}}")
        else:
            parts.append("{{…}}")
    return "".join(parts).strip()


_FILTER = re.compile(r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>==|=|!=|>=|<=|>|<|~)\s*(?P<value>.+?)\s*$")


class FilterError(ValueError):
    pass


def persona_filter(text: str, schema: pa.Schema):
    """`major = economics`, `age >= 21`, `background ~ physics` (contains) -> a dataset expression."""
    match = _FILTER.match(text)
    if not match:
        raise FilterError("write a filter as FIELD OP VALUE, e.g. `age >= 21`, `major = economics`, `background ~ physics`")
    name, op, raw = match["field"], match["op"], match["value"].strip("\"'")
    if name not in schema.names:
        raise FilterError(f"no persona field `{name}` (fields: {', '.join(schema.names)})")
    kind = schema.field(name).type
    column = ds.field(name)
    if op == "~":
        return pc.match_substring(column.cast(pa.string()), raw, ignore_case=True)
    try:
        if pa.types.is_integer(kind):
            value = int(raw)
        elif pa.types.is_floating(kind):
            value = float(raw)
        elif pa.types.is_boolean(kind):
            value = raw.lower() in ("true", "1", "yes")
        else:
            value = raw
    except ValueError:
        raise FilterError(f"`{raw}` is not a value of field `{name}` ({kind})") from None
    return {"=": column == value, "==": column == value, "!=": column != value, ">=": column >= value,
            "<=": column <= value, ">": column > value, "<": column < value}[op]


class PersonaPages:
    """Pages of PAGE_ROWS personas; reads the one row group a page falls in (a few recent ones cached)."""

    def __init__(self, path: str):
        self.path = path
        self.file = pq.ParquetFile(path)
        self.total = self.file.metadata.num_rows
        self.starts = []
        start = 0
        for i in range(self.file.metadata.num_row_groups):
            self.starts.append(start)
            start += self.file.metadata.row_group(i).num_rows
        self._groups: OrderedDict = OrderedDict()

    @property
    def columns(self) -> list[str]:
        return self.file.schema_arrow.names

    def _group(self, i: int) -> pa.Table:
        if i not in self._groups:
            self._groups[i] = self.file.read_row_group(i)
            while len(self._groups) > 2:
                self._groups.popitem(last=False)
        self._groups.move_to_end(i)
        return self._groups[i]

    def page(self, number: int, filter_text: str = "") -> dict:
        """Rows of page `number` (0-based) and the number of matching rows."""
        if filter_text.strip():
            return self._filtered(number, persona_filter(filter_text, self.file.schema_arrow))
        pages = max(1, math.ceil(self.total / PAGE_ROWS))
        number = min(max(0, number), pages - 1)
        first, last = number * PAGE_ROWS, min(self.total, (number + 1) * PAGE_ROWS)
        parts = []
        for i, start in enumerate(self.starts):
            size = self.file.metadata.row_group(i).num_rows
            if start + size <= first or start >= last:
                continue
            group = self._group(i)
            parts.append(group.slice(max(0, first - start), min(size, last - start) - max(0, first - start)))
        rows = _rows(pa.concat_tables(parts)) if parts else []
        return {"rows": rows, "total": self.total, "page": number, "pages": pages}

    def _filtered(self, number: int, expression) -> dict:
        dataset = ds.dataset(self.path)
        total = dataset.count_rows(filter=expression)
        pages = max(1, math.ceil(total / PAGE_ROWS))
        number = min(max(0, number), pages - 1)
        skip, rows = number * PAGE_ROWS, []
        for batch in dataset.to_batches(filter=expression):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            rows.extend(_rows(pa.Table.from_batches([batch.slice(skip, PAGE_ROWS - len(rows))])))
            skip = 0
            if len(rows) >= PAGE_ROWS:
                break
        return {"rows": rows, "total": total, "page": number, "pages": pages}
