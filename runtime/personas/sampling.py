"""Sample personas for a range of agents, vectorised; agent i's persona depends on (seed, i) only.

In: a plan persona (fields in evaluation order), agent ids [start, stop), the seed, and a
`write(model, prompts) -> texts` function for LLM-written fields. Out: columns by field name
(numpy arrays; texts as object arrays whose equal values share one str object).
"""
from __future__ import annotations

import csv
import dataclasses
import json
from typing import Callable

import numpy as np

from populace.compiler.plan.tables import table_cell

from populace.runtime.columns import rng
from populace.runtime.columns.vector import Context, Frame, evaluate, is_vector


def _draw(dist: dict, seed: int, purpose: str, start: int, stop: int):
    name, a = dist["name"], dist.get("args", {})
    if name == "choice":
        values = dist["values"]
        codes = rng.block_draws(seed, purpose, start, stop,
                                lambda g, n: g.choice(len(values), size=n, p=np.asarray(dist["weights"]) / sum(dist["weights"])))
        table = np.empty(len(values), dtype=object if any(isinstance(v, str) for v in values) else None)
        table[:] = values
        return table[codes]
    if name == "constant":
        return np.full(stop - start, a.get("value"))
    draw = {
        "uniform": lambda g, n: g.uniform(a["low"], a["high"], n),
        "uniform_int": lambda g, n: g.integers(int(a["low"]), int(a["high"]), n, endpoint=True),
        "normal": lambda g, n: g.normal(a["mean"], a["sd"], n),
        "lognormal": lambda g, n: g.lognormal(a["mean"], a["sigma"], n),
        "beta": lambda g, n: g.beta(a["a"], a["b"], n),
        "bernoulli": lambda g, n: g.random(n) < a["p"],
        "poisson": lambda g, n: g.poisson(a["lam"], n),
    }[name]
    values = rng.block_draws(seed, purpose, start, stop, draw)
    if "clamp" in a:
        values = np.clip(values, a["clamp"][0], a["clamp"][1])
    if "round" in a:
        values = np.round(values, a["round"])
        if a["round"] == 0:
            values = values.astype(np.int64)
    return values


def sample(persona, start: int, stop: int, seed: int,
           write: Callable[[str, list[str]], list[str]] | None = None, known: dict | None = None,
           record: dict | None = None) -> dict:
    """Columns for agents [start, stop) of one persona (a plan Persona: `name` and `fields`).

    `known` ({"by_key": {field: {repr(combination): text}}, "by_prompt": {field: {prompt: text}}})
    holds written texts agreed for the whole population (see agreed_texts): those are not written
    again. `record`, when given, is filled with the texts written here in the same form.
    """
    ids = np.arange(start, stop, dtype=np.int64)
    columns: dict = {}
    types: dict = {}
    if persona is None:
        return columns
    frame = Frame(columns=columns, ids=ids, types=types)
    ctx = Context(seed=seed)
    for f in persona.fields:
        name, kind = f["name"], f["kind"]
        purpose = f"persona:{persona.name}.{name}"
        types[name] = f["type"]
        if kind == "sample":
            columns[name] = _draw(f["dist"], seed, purpose, start, stop)
        elif kind == "by":
            on = columns[f["on"]]
            default = f.get("default")
            out = None
            for i, case in enumerate(f["cases"] + ([{"key": None, "dist": default}] if default else [])):
                values = _draw(case["dist"], seed, f"{purpose}#{i}", start, stop)
                if out is None:
                    out = np.zeros(stop - start, dtype=values.dtype if values.dtype != object else object)
                    if out.dtype.kind == "f":
                        out[:] = np.nan
                mask = np.ones(stop - start, dtype=bool) if case["key"] is None else (on == case["key"])
                if case["key"] is None:
                    mask = ~np.isin(on, [c["key"] for c in f["cases"]])
                out[mask] = values[mask]
            columns[name] = out
        elif kind == "derive":
            value = evaluate(f["expr"], frame, ctx)
            columns[name] = value if is_vector(value) else np.full(stop - start, value,
                                                                   dtype=object if isinstance(value, str) else None)
            if isinstance(columns[name], list):
                columns[name] = np.array(columns[name], dtype=object)
        elif kind == "write":
            columns[name] = _write(f, frame, ctx, write, known, record)
        elif kind == "table":
            for col, values in _table_rows(f, seed, purpose, start, stop).items():
                columns[f"{name}.{col}"] = values
                types[f"{name}.{col}"] = f.get("columns", {}).get(col, {"kind": "any"})
    return columns


def column_types(persona) -> dict:
    """Plan types of the columns `sample` returns (a table field `row` gives columns `row.<column>`)."""
    types: dict = {}
    for f in (persona.fields if persona is not None else ()):
        if f["kind"] == "table":
            for col, ty in f.get("columns", {}).items():
                types[f"{f['name']}.{col}"] = ty
        else:
            types[f["name"]] = f["type"]
    return types


def _write(f: dict, frame: Frame, ctx: Context, write, known: dict | None = None, record: dict | None = None) -> np.ndarray:
    name = f["name"]
    if f.get("reuse_per") is not None:
        # One text per distinct combination of the named fields: the first agent (lowest id) with
        # that combination stands for it, and only those agents' prompts are rendered.
        codes, first = _combinations([frame.columns[k] for k in f["reuse_per"]], frame.size)
        keys = [repr(tuple(_plain(frame.columns[k][i]) for k in f["reuse_per"])) for i in first.tolist()]
        agreed = (known or {}).get("by_key", {}).get(name, {})
        texts = np.empty(len(first), dtype=object)
        missing = [j for j, key in enumerate(keys) if key not in agreed]
        for j, key in enumerate(keys):
            if key in agreed:
                texts[j] = agreed[key]
        if missing:
            pick = first[missing]
            sub = Frame(columns={k: v[pick] for k, v in frame.columns.items()}, ids=frame.ids[pick], types=frame.types)
            prompts = evaluate(f["template"], sub, ctx)
            if not is_vector(prompts):
                prompts = [prompts] * len(missing)
            # Calls go out in a stable order (by the combination), whatever order the agents come in.
            order = sorted(range(len(missing)), key=lambda m: keys[missing[m]])
            written = write(f["model"], [prompts[m] for m in order])
            for m, text in zip(order, written):
                texts[missing[m]] = text
        if record is not None:
            record.setdefault("by_key", {})[name] = dict(zip(keys, texts.tolist()))
        return texts[codes] if frame.size else np.empty(0, dtype=object)
    prompts = evaluate(f["template"], frame, ctx)
    if not is_vector(prompts):
        prompts = [prompts] * frame.size
    agreed = (known or {}).get("by_prompt", {}).get(name, {})
    distinct = sorted(set(prompts) - set(agreed))
    texts = dict(agreed)
    texts.update(zip(distinct, write(f["model"], distinct) if distinct else []))
    if record is not None:
        record.setdefault("by_prompt", {})[name] = {p: texts[p] for p in set(prompts)}
    out = np.empty(frame.size, dtype=object)
    out[:] = [texts[p] for p in prompts]
    return out


def _plain(value):
    """A numpy scalar as the Python value it holds (repr(np.int64(3)) is not repr(3))."""
    return value.item() if isinstance(value, np.generic) else value


def agreed_texts(persona, size: int, seed: int, write) -> dict:
    """Written texts for a whole population, so that shards agree on them (known= in sample).

    Shards sample their own id ranges; with `reuse per` each would write a text for every
    combination it holds, so a combination spread over four shards cost four calls and, with a
    model that answers differently each time, got four different texts. Here the population is
    sampled once up to its last `reuse per` field, the first agent of each combination in the
    whole population stands for it (as with one shard), and every text is written once.
    """
    fields = persona.fields
    last = max((i for i, f in enumerate(fields) if f["kind"] == "write" and f.get("reuse_per") is not None), default=-1)
    if last < 0:
        return {}
    record: dict = {}
    sample(dataclasses.replace(persona, fields=fields[:last + 1]), 0, size, seed, write=write, record=record)
    return record


def _combinations(columns: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(a combination code per agent, the first agent of each code) for the values of these columns."""
    codes = np.zeros(size, dtype=np.int64)
    for column in columns:
        column_codes, count = _factorize(column)
        _, codes = np.unique(codes * count + column_codes, return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
    if not size:
        return codes, np.zeros(0, dtype=np.int64)
    _, first, codes = np.unique(codes, return_index=True, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), first.astype(np.int64)


def _factorize(column: np.ndarray) -> tuple[np.ndarray, int]:
    if column.dtype != object:
        values, codes = np.unique(column, return_inverse=True)
        return codes.reshape(-1).astype(np.int64), len(values)
    # Texts: a dict beats sorting Python objects, and takes None and mixed types
    seen: dict = {}
    codes = np.fromiter((seen.setdefault(v, len(seen)) for v in column.tolist()), dtype=np.int64, count=len(column))
    return codes, max(len(seen), 1)


def _table_rows(f: dict, seed: int, purpose: str, start: int, stop: int) -> dict:
    rows = read_table(f["path"])
    if not rows:
        raise ValueError(f"table {f['path']} has no rows")
    n = stop - start
    if f["mode"] == "in_order":
        idx = np.arange(start, stop) % len(rows)
    elif f["mode"] == "without":
        if stop > len(rows):
            raise ValueError(f"table {f['path']} has {len(rows)} rows, fewer than the agents sampled without replacement")
        perm = np.random.Generator(np.random.Philox(key=[rng.key(seed, purpose), 0])).permutation(len(rows))
        idx = perm[start:stop]
    else:
        idx = rng.block_draws(seed, purpose, start, stop, lambda g, k: g.integers(0, len(rows), k))
    out = {}
    for col in rows[0]:
        values = [rows[i].get(col) for i in idx.tolist()]
        arr = np.empty(n, dtype=object)
        arr[:] = values
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            arr = np.asarray(values, dtype=float if any(isinstance(v, float) for v in values) else np.int64)
        out[col] = arr
    return out


_TABLES: dict = {}


def read_table(path: str) -> list[dict]:
    if path not in _TABLES:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.endswith(".csv"):
                rows = [{k: table_cell(v) for k, v in r.items()} for r in csv.DictReader(fh)]
            else:
                rows = [json.loads(line) for line in fh if line.strip()]
        _TABLES[path] = rows
    return _TABLES[path]



def sample_kinds(personas: list, parts: list, start: int, stop: int, seed: int) -> tuple[dict, dict]:
    """Columns and types for agents [start, stop) of a mixture whose kinds have personas of their
    own: `personas[i]` (a plan Persona, or None) for the agents of `parts[i]` = (first id, end id).
    A field that a kind's persona lacks is missing for its agents. Each kind samples as a
    population of that persona would over the same ids, so the values never depend on shards."""
    types: dict = {}
    for persona in personas:
        for name, ty in column_types(persona).items():
            types.setdefault(name, ty)
    n = stop - start
    columns = {name: (np.full(n, np.nan) if ty.get("kind") in ("int", "float", "bool") else np.full(n, None, dtype=object))
               for name, ty in types.items()}
    for persona, (lo, hi) in zip(personas, parts):
        lo, hi = max(lo, start), min(hi, stop)
        if lo >= hi or persona is None:
            continue
        for name, values in sample(persona, lo, hi, seed).items():
            column = columns[name]
            if column.dtype != object and np.asarray(values).dtype == object:
                column = columns[name] = column.astype(object)
            column[lo - start:hi - start] = values
    for name, column in columns.items():  # whole numbers stay whole where no kind lacks them
        if types[name].get("kind") == "int" and column.dtype != object and not np.isnan(column).any():
            columns[name] = column.astype(np.int64)
        elif types[name].get("kind") == "bool" and column.dtype != object and not np.isnan(column).any():
            columns[name] = column.astype(bool)
    return columns, types
