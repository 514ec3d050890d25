"""Population aggregates, map-reduce style: each shard's partial result, and their combination.

In: an aggregate's plan spec (`{"agg": "mean", "arg": ..., "params": {...}}`) and one shard's values
of its argument (numpy, NaN / None where missing). Out: `partial(...)`, small enough to send to the
driver (sums and counts, not rows), and `combine(spec, partials)`, the aggregate's value. Sums are
correctly rounded, so 1, 2 or 40 shards give the same value, bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

from populace.compiler.plan.evaluate import EvalError

from .vector import is_vector


def partial(spec: dict, values, n: int, ids: np.ndarray | None = None):
    """One shard's partial result for an aggregate; `combine` reduces partials to the value.
    `ids` are the agents' ids (argmin / argmax answer with one)."""
    fn = spec["agg"]
    arr = np.asarray(values) if is_vector(values) else np.full(n, values)
    if fn in ("argmin", "argmax"):
        return _best(fn, arr, ids)
    if arr.dtype == object:
        present = arr[np.array([v is not None for v in arr.tolist()], dtype=bool)] if len(arr) else arr
        if fn == "count":
            return int(len(present))
        if fn in ("min", "max"):
            return (min(present.tolist()) if fn == "min" else max(present.tolist())) if len(present) else None
        arr = np.asarray([float(v) for v in present.tolist()], dtype=float)
    arr = arr.astype(np.float64)
    present = arr[~np.isnan(arr)]
    if fn == "count":
        return int(len(present))
    if fn in ("mean", "sum"):
        return (exact_sum(present), int(len(present)))
    if fn == "share":
        return (float((present != 0).sum()), int(len(present)))
    if fn == "std":
        return (int(len(present)), exact_sum(present), exact_sum(present ** 2))
    if fn in ("min", "max"):
        return (float(present.min()) if fn == "min" else float(present.max())) if len(present) else None
    if fn == "histogram" and "low" in spec["params"] and "high" in spec["params"]:
        p = spec["params"]
        counts, _ = np.histogram(present, bins=int(p["bins"]), range=(p["low"], p["high"]))
        return counts.astype(np.int64)
    return present  # median, quantile, histogram without a range: the values themselves


def _best(fn: str, arr: np.ndarray, ids) -> tuple | None:
    """(best value, its agent's id): the lowest id among equals, so any sharding picks the same agent."""
    vals = np.array([np.nan if v is None else float(v) for v in arr.tolist()]) if arr.dtype == object \
        else arr.astype(np.float64)
    ok = ~np.isnan(vals)
    if not ok.any():
        return None
    vals, ids = vals[ok], np.asarray(ids)[ok]
    best = vals.min() if fn == "argmin" else vals.max()
    return (float(best), int(ids[vals == best].min()))


def exact_sum(values: np.ndarray) -> tuple[float, float]:
    """(hi, lo): hi is the correctly rounded sum of `values`, lo the correctly rounded rest.

    Shards add their agents' values; summing the shards' float sums would depend on where the
    shard boundaries fall (in the last bits). fsum of every shard's (hi, lo) is the correctly
    rounded total whatever the sharding, so 1, 2 or 40 shards give the same mean, bit for bit.
    Whole numbers (counts, int answers, bools) whose sum is exact in a float take numpy's sum.
    """
    if not len(values):
        return (0.0, 0.0)
    magnitude = float(np.abs(values).sum())
    if magnitude < 2.0 ** 53 and bool(np.all(values == np.trunc(values))):
        return (float(values.sum()), 0.0)
    items = values.tolist()
    hi = math.fsum(items)
    items.append(-hi)
    return (hi, math.fsum(items))


def _total(pairs) -> float:
    return math.fsum(x for pair in pairs for x in pair)


def combine(spec: dict, parts: list):
    fn, params = spec["agg"], spec["params"]
    if fn == "count":
        return int(sum(parts))
    if fn in ("argmin", "argmax"):
        found = [p for p in parts if p is not None]
        if not found:
            return None
        sign = 1 if fn == "argmin" else -1
        return min(found, key=lambda p: (sign * p[0], p[1]))[1]
    if fn == "mean":
        total, count = _total(p[0] for p in parts), sum(p[1] for p in parts)
        return total / count if count else float("nan")
    if fn == "sum":
        total = _total(p[0] for p in parts)
        return int(total) if params.get("int") else total
    if fn == "share":
        t, c = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return t / c if c else float("nan")
    if fn == "std":
        n, s, ss = sum(p[0] for p in parts), _total(p[1] for p in parts), _total(p[2] for p in parts)
        return float(np.sqrt(max(ss / n - (s / n) ** 2, 0.0))) if n else float("nan")
    if fn in ("min", "max"):
        present = [p for p in parts if p is not None]
        value = (min(present) if fn == "min" else max(present)) if present else None
        return int(value) if params.get("int") and isinstance(value, float) else value
    if fn == "histogram":
        bins = int(params["bins"])
        if "low" in params and "high" in params:
            counts = np.sum(parts, axis=0) if parts else np.zeros(bins, dtype=np.int64)
            edges = np.linspace(params["low"], params["high"], bins + 1)
        else:
            values = np.concatenate(parts) if parts else np.zeros(0)
            counts, edges = np.histogram(values, bins=bins)
        return {"counts": [int(c) for c in counts], "edges": [round(float(e), 6) for e in edges]}
    values = np.concatenate(parts) if parts else np.zeros(0)
    if not len(values):
        return float("nan")
    if fn == "median":
        return float(np.median(values))
    if fn == "quantile":
        return float(np.quantile(values, params["q"]))
    raise EvalError(f"unknown aggregate {fn}")
