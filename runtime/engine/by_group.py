"""Grouped records: `record ... by k1, k2` computes its aggregates once per value of the keys.

In: the key expressions, the aggregates over the population (plan specs, with their `where`), one
shard's frame and context. Out: per spec, (the key of each group, per-group partials) as
environments/groups.py makes them, so the driver combines shards exactly as for group sets. A key
is the value itself (one numeric key) or the JSON of the key values, so every shard names a group
the same way; an agent with a missing key is in no group.
"""
from __future__ import annotations

import json

import numpy as np

from populace.runtime.columns.vector import Context, Frame, evaluate, is_vector, truth
from populace.runtime.environments import groups


def keyed_partials(keys: list, specs: list[dict], frame: Frame, ctx: Context) -> list:
    n = frame.size
    columns = [evaluate(k, frame, ctx) for k in keys]
    columns = [np.asarray(c) if is_vector(c) else np.full(n, c, dtype=object if isinstance(c, str) else None)
               for c in columns]
    present = np.ones(n, dtype=bool)
    for c in columns:
        present &= truth_present(c)
    if len(columns) == 1 and columns[0].dtype != object:
        joined = columns[0]
    else:
        rows = zip(*[plain_list(c) for c in columns])
        joined = np.array([json.dumps(list(r)) if ok else "" for r, ok in zip(rows, present.tolist())], dtype=object)
    out = []
    for spec in specs:
        values = evaluate(spec["arg"], frame, ctx)
        keep = present.copy()
        if "where" in spec:
            keep &= truth(evaluate(spec["where"], frame, ctx), n)
        values = np.asarray(values)[keep] if is_vector(values) else values
        out.append(groups.partials(spec, values, joined[keep]))
    return out


def truth_present(column: np.ndarray) -> np.ndarray:
    """Where a key column has a value (not None, not NaN)."""
    if column.dtype.kind == "f":
        return ~np.isnan(column)
    if column.dtype == object:
        return np.array([v is not None and v == v for v in column.tolist()], dtype=bool)
    return np.ones(len(column), dtype=bool)


def plain_list(column: np.ndarray) -> list:
    """A key column as JSON-ready Python values (whole floats stay floats: 1.0 and 1 are one key)."""
    return [v.item() if isinstance(v, np.generic) else v for v in column.tolist()]
