"""Group sets: which group each agent is in, per-group partial aggregates, and their combination.

In: a plan group (`{"population", "size"}` or `{"population", "by_field"}`), the seed, a shard's
agent ids and persona columns. Out: per agent a group key (an int for random groups, the field's
value for groups by a persona field); per shard and aggregate the partials of every group it
touches; in the driver, one value per group. Membership depends only on the seed and the agent
ids, never on the shard layout: random groups come from one seeded permutation of the whole
population (agent perm[j] is in group j // size).
"""
from __future__ import annotations

import math

import numpy as np

from populace.compiler.plan.evaluate import EvalError

from populace.runtime.columns import rng

PER_GROUP = ("mean", "sum", "count", "share", "min", "max", "std", "median", "quantile")


def segment_quantiles(values: np.ndarray, segment: np.ndarray, segments: int, q: float) -> np.ndarray:
    """The q-quantile (numpy's linear rule) of `values` within each segment 0..segments-1; NaN for
    an empty segment. Missing values must be removed before."""
    order = np.lexsort((values, segment))
    vals, seg = values[order], segment[order]
    counts = np.bincount(seg, minlength=segments)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(segments, np.nan)
    has = counts > 0
    pos = q * (counts[has] - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts[has] - 1)
    frac = pos - lo
    base = starts[has]
    out[has] = vals[base + lo] * (1 - frac) + vals[base + hi] * frac
    return out


def group_keys(group, size: int, seed: int, ids: np.ndarray, columns: dict, version: int = 0) -> np.ndarray:
    """The group key of each of `ids` (agents of a population of `size`) in a plan Group; `version`
    counts the `regroup`s so far: each draws a new random partition, the same on every shard."""
    if group.by_field is not None:
        return np.asarray(columns[group.by_field])
    parts = ("group", group.name) if not version else ("group", group.name, version)
    perm = np.random.Generator(np.random.Philox(key=[rng.key(seed, *parts), 0])).permutation(size)
    member_of = np.empty(size, dtype=np.int64)
    member_of[perm] = np.arange(size, dtype=np.int64) // int(group.size)
    return member_of[ids]


def partials(spec: dict, values, keys: np.ndarray):
    """One shard's per-group partials for an aggregate: (group keys, arrays of partial values)."""
    fn = spec["agg"]
    if fn not in PER_GROUP:
        raise EvalError(f"`{fn}` per group is not supported; use mean, sum, count, share, min, max, std, median or quantile")
    n = len(keys)
    arr = np.asarray(values) if isinstance(values, np.ndarray) else np.full(n, values)
    if arr.dtype == object:
        present = np.array([v is not None for v in arr.tolist()], dtype=bool)
        if fn != "count":
            arr = np.array([float(v) if v is not None else np.nan for v in arr.tolist()], dtype=np.float64)
    else:
        arr = arr.astype(np.float64)
        present = ~np.isnan(arr)
    unique, inverse = np.unique(keys, return_inverse=True)
    if fn in ("median", "quantile"):  # the values themselves, by group (8 bytes a member)
        return unique, (inverse[present], np.asarray(arr, dtype=np.float64)[present])
    count = np.bincount(inverse, weights=present, minlength=len(unique))
    if fn == "count":
        return unique, (count,)
    x = np.where(present, arr, 0.0) if arr.dtype != object else arr
    if fn == "share":
        return unique, (np.bincount(inverse, weights=(x != 0) & present, minlength=len(unique)), count)
    if fn in ("mean", "sum"):
        return unique, (count, *group_sums(inverse, x, len(unique)))
    if fn == "std":
        return unique, (count, *group_sums(inverse, x, len(unique)), *group_sums(inverse, x * x, len(unique)))
    fill = np.inf if fn == "min" else -np.inf
    out = np.full(len(unique), fill)
    (np.minimum if fn == "min" else np.maximum).at(out, inverse[present], arr[present])
    return unique, (out,)


def group_sums(inverse: np.ndarray, x: np.ndarray, groups: int) -> tuple:
    """(hi, lo) per group: each group's correctly rounded sum and the rounding rest (lo is None when
    the values are whole numbers whose sums a float holds exactly, as bincount then gives them).

    Groups span shards; adding the shards' float sums would depend on where the shard boundaries
    fall (in the last bits). With (hi, lo) from every shard, combine() rounds each group's total
    once, so any layout gives the same bits. Non-whole values cost a Python loop over the groups.
    """
    if float(np.abs(x).sum()) < 2.0 ** 53 and bool(np.all(x == np.trunc(x))):
        return np.bincount(inverse, weights=x, minlength=groups), None
    hi, lo = np.zeros(groups), np.zeros(groups)
    for g, part in _by_group(inverse, x, groups):
        hi[g] = math.fsum(part)
        part.append(-hi[g])
        lo[g] = math.fsum(part)
    return hi, lo


def _fsums(inverse: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    """math.fsum of each group's values."""
    out = np.zeros(groups)
    for g, part in _by_group(inverse, values, groups):
        out[g] = math.fsum(part)
    return out


def _by_group(inverse: np.ndarray, values: np.ndarray, groups: int):
    """(group, its values as a list) for every group with values."""
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(groups + 1)).tolist()
    items = values[order].tolist()
    for g in range(groups):
        if bounds[g] < bounds[g + 1]:
            yield g, items[bounds[g]:bounds[g + 1]]


def combine(spec: dict, parts: list) -> dict:
    """Every shard's partials -> {"keys": sorted group keys, "values": one value per group}."""
    fn, params = spec["agg"], spec["params"]
    if fn in ("median", "quantile"):
        keys = np.concatenate([p[0][p[1][0]] for p in parts])
        unique, inverse = np.unique(keys, return_inverse=True)
        values = segment_quantiles(np.concatenate([p[1][1] for p in parts]), inverse, len(unique),
                                   0.5 if fn == "median" else float(params["q"]))
        return {"keys": unique, "values": values}
    keys = np.concatenate([p[0] for p in parts])
    unique, inverse = np.unique(keys, return_inverse=True)
    m = len(unique)

    def total(i):
        return np.bincount(inverse, weights=np.concatenate([p[1][i] for p in parts]), minlength=m)

    def exact(i):  # parts hold (hi, lo) at i, i + 1: correctly rounded per group, whatever the sharding
        los = [p[1][i + 1] for p in parts]
        if all(lo is None for lo in los):
            return total(i)  # whole numbers: bincount is exact
        values = np.concatenate([p[1][i] for p in parts] + [np.zeros(len(p[0])) if lo is None else lo
                                                             for p, lo in zip(parts, los)])
        return _fsums(np.concatenate([inverse, inverse]), values, m)

    with np.errstate(invalid="ignore", divide="ignore"):
        if fn == "count":
            values = total(0).astype(np.int64)
        elif fn == "sum":
            values = exact(1)
            if params.get("int"):
                values = values.astype(np.int64)
        elif fn == "mean":
            values = exact(1) / total(0)
        elif fn == "share":
            values = total(0) / total(1)
        elif fn == "std":
            n, s, ss = total(0), exact(1), exact(3)
            values = np.sqrt(np.maximum(ss / n - (s / n) ** 2, 0.0))
        else:
            values = np.full(m, np.inf if fn == "min" else -np.inf)
            (np.minimum if fn == "min" else np.maximum).at(values, inverse, np.concatenate([p[1][0] for p in parts]))
            values[np.isinf(values)] = np.nan
    return {"keys": unique, "values": values}


def lookup(combined: dict, keys: np.ndarray) -> np.ndarray:
    """The value of each agent's own group."""
    index = np.searchsorted(combined["keys"], keys)
    return np.asarray(combined["values"])[index]


def mates(sender_keys: np.ndarray, sender_ids: np.ndarray, texts: list, keys: np.ndarray, ids: np.ndarray) -> list:
    """For each receiver (keys, ids): its group mates' messages (not its own), one per line in id order."""
    order = np.lexsort((sender_ids, sender_keys))
    sk, si = sender_keys[order], sender_ids[order]
    st = [texts[i] for i in order.tolist()]
    lo = np.searchsorted(sk, keys, side="left")
    hi = np.searchsorted(sk, keys, side="right")
    out = []
    for a, b, me in zip(lo.tolist(), hi.tolist(), ids.tolist()):
        lines = [st[j] for j in range(a, b) if si[j] != me]
        out.append("\n".join(lines) if lines else None)
    return out
