"""Evaluate plan expressions for all agents of a shard at once (numpy), and render templates.

In: a plan expression, a Frame (the shard's columns, agent ids, field types) and a Context
(loop variables, lets, environment values, precomputed aggregates, seed). Out: a Python value
when the expression is the same for every agent, else a numpy array with one value per agent
(templates: a list of str). Operators mean what compiler/plan/evaluate.py says they mean.
Missing numbers are NaN; missing texts are None.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from populace.compiler.plan.evaluate import BINARY, FUNCTIONS, EvalError, format_value

from . import rng


@dataclass
class Frame:
    """One shard's agents: columns by field name, their global ids, and each field's plan type."""

    columns: dict
    ids: np.ndarray
    types: dict  # field -> plan type json
    world: object = None  # the shard: group keys and adjacency rows of its agents (environments.py)
    kinds: np.ndarray | None = None  # each agent's kind (agent declaration name), for `self.kind`

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass
class Context:
    variables: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # env -> field -> value
    aggregates: dict = field(default_factory=dict)  # agg_key(expr) -> value
    seed: int = 0
    where: str = ""  # step id and iteration: names the draws of random()
    groups: dict = field(default_factory=dict)  # group set -> times it was drawn anew (`regroup`)


def agg_key(expr: dict) -> str:
    return json.dumps(expr, sort_keys=True, separators=(",", ":"))


def is_vector(v) -> bool:
    """Per-agent values are numpy arrays; a Python list is one (list-typed) value."""
    return isinstance(v, np.ndarray)


_NP_BINARY = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "**": np.power,
    "==": lambda a, b: _eq(a, b), "!=": lambda a, b: ~_eq(a, b),
    "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
}


def _eq(a, b):
    result = np.asarray(a == b) if not (isinstance(a, np.ndarray) and a.dtype == object) else np.array(
        [x == y for x, y in zip(a, b if is_vector(b) else [b] * len(a))], dtype=bool)
    return result.astype(bool)


def _to_array(v, n):
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, list):
        return np.array(v, dtype=object)
    return np.full(n, v, dtype=object if isinstance(v, str) or v is None else None)


def evaluate(expr: dict, frame: Frame, ctx: Context):
    if "lit" in expr:
        return expr["lit"]
    if "var" in expr:
        return ctx.variables[expr["var"]]
    if "env" in expr and "field" in expr and "method" not in expr:
        return ctx.env[expr["env"]][expr["field"]]
    if "col" in expr:
        if "via" in expr:
            raise EvalError("a group's or neighbours' field needs an aggregate, e.g. sum(tables.x)")
        if expr.get("src") == "builtin":
            return builtin(expr["col"], frame)
        return frame.columns[expr["col"]]
    if "agg" in expr:
        if "via" in expr:
            from populace.runtime.environments.builtin import via_aggregate

            return via_aggregate(expr, frame, ctx)
        return ctx.aggregates[agg_key(expr)]
    if "method" in expr:
        from populace.runtime.environments.builtin import method_value

        return method_value(expr, frame, ctx, [evaluate(a, frame, ctx) for a in expr["args"]])
    if "op" in expr:
        return _op(expr, frame, ctx)
    if "if" in expr:
        cond = evaluate(expr["if"], frame, ctx)
        then, orelse = evaluate(expr["then"], frame, ctx), evaluate(expr["else"], frame, ctx)
        if not is_vector(cond):
            return then if cond else orelse
        if isinstance(then, str) or isinstance(orelse, str) or (is_vector(then) and np.asarray(then).dtype == object):
            t, o = _to_array(then, frame.size), _to_array(orelse, frame.size)
            out = np.array(o, dtype=object)
            out[np.asarray(cond, dtype=bool)] = t[np.asarray(cond, dtype=bool)]
            return out
        return np.where(np.asarray(cond, dtype=bool), then, orelse)
    if "call" in expr:
        return _call(expr, frame, ctx)
    if "list" in expr:
        items = [evaluate(e, frame, ctx) for e in expr["list"]]
        if any(is_vector(i) for i in items):
            raise EvalError("a list of per-agent values")
        return items
    if "record" in expr:
        return {k: evaluate(v, frame, ctx) for k, v in expr["record"].items()}
    if "get" in expr:
        inner = expr["get"]
        if "col" in inner and f"{inner['col']}.{expr['field']}" in frame.columns:
            return frame.columns[f"{inner['col']}.{expr['field']}"]
        value = evaluate(inner, frame, ctx)
        if isinstance(value, dict):
            return value[expr["field"]]
        if is_vector(value):  # one record per agent (a record-typed ask output): that field of each
            return _field_of_each(value, expr["field"])
        raise EvalError(f"no field `{expr['field']}`")
    if "index" in expr:
        seq, i = (evaluate(e, frame, ctx) for e in expr["index"])
        if is_vector(seq) or is_vector(i):
            raise EvalError("indexing per-agent values is not supported")
        try:
            return seq[int(i)]
        except (IndexError, TypeError, ValueError):
            raise EvalError(f"index {format_value(i)} is out of range") from None
    if "template" in expr:
        return render(expr, frame, ctx)
    raise EvalError(f"this runtime cannot evaluate {sorted(expr)}")


def builtin(name: str, frame: Frame) -> np.ndarray:
    """`self.id` (0..N-1, stable) and `self.kind` (the agent's declaration name)."""
    if name == "id":
        return np.asarray(frame.ids, dtype=np.int64)
    if name == "kind":
        if frame.kinds is None:
            raise EvalError("`kind` is not known here")
        return frame.kinds
    raise EvalError(f"no built-in field `{name}`")


def truth(values, n: int) -> np.ndarray:
    """A filter's values as a mask: true where the value is true; a missing value (NaN, None) is false."""
    if not is_vector(values):
        return np.full(n, bool(values) if values is not None and values == values else False)
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind == "f":
        return (arr == arr) & (arr != 0)
    if arr.dtype.kind in "iu":
        return arr != 0
    return np.array([v is not None and v == v and bool(v) for v in arr.tolist()], dtype=bool)


def _field_of_each(records: np.ndarray, name: str) -> np.ndarray:
    """A field of per-agent records; numbers come back as floats with NaN where missing."""
    values = [r.get(name) if isinstance(r, dict) else None for r in records.tolist()]
    if all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in values):
        return np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _op(expr, frame, ctx):
    op, args = expr["op"], expr["args"]
    values = [evaluate(a, frame, ctx) for a in args]
    if not any(is_vector(v) for v in values):
        if op == "and":
            return bool(values[0]) and bool(values[1])
        if op == "or":
            return bool(values[0]) or bool(values[1])
        if op == "not":
            return not values[0]
        if op == "neg":
            return -values[0]
        try:
            return BINARY[op](values[0], values[1])
        except TypeError as e:
            raise EvalError(str(e)) from None
    if op == "and":
        return np.logical_and(_as_bool(values[0]), _as_bool(values[1]))
    if op == "or":
        return np.logical_or(_as_bool(values[0]), _as_bool(values[1]))
    if op == "not":
        return np.logical_not(_as_bool(values[0]))
    if op == "neg":
        return -np.asarray(values[0])
    a, b = values
    if op in ("+", "-", "*", "/", "//", "%", "**"):
        # true counts 1: numpy would add two bool columns as `or` and refuse to subtract them
        a, b = (np.asarray(v, dtype=np.int64) if is_vector(v) and np.asarray(v).dtype == bool else
                int(v) if isinstance(v, bool) else v for v in (a, b))
    if op in ("in", "not in"):
        if is_vector(b):
            raise EvalError("`in` with a per-agent list is not supported")
        result = np.isin(np.asarray(a), np.asarray(b, dtype=object if any(isinstance(x, str) for x in b) else None))
        return result if op == "in" else ~result
    if op in ("/", "//", "%"):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {"/": np.divide, "//": np.floor_divide, "%": np.mod}[op](a, b)
        return np.where(b == 0, np.nan, out)
    fn = _NP_BINARY[op]
    if op == "+" and any(isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype == object) for v in values):
        n = frame.size
        return np.array([x + y for x, y in zip(_to_array(a, n), _to_array(b, n))], dtype=object)
    return fn(a, b)


def _as_bool(v):
    return np.asarray(v, dtype=bool) if is_vector(v) else bool(v)


_NP_FUNCTIONS = {
    "abs": np.abs, "floor": np.floor, "ceil": np.ceil, "sqrt": np.sqrt, "log": np.log, "exp": np.exp,
    "float": lambda x: np.asarray(x, dtype=float),
    "int": lambda x: np.trunc(np.asarray(x, dtype=float)),
}


def _draws(expr, frame, ctx) -> np.ndarray:
    """One uniform per agent for random() or choice(): each call site of a step draws its own numbers
    (`site` numbers them), the same whatever the sharding."""
    parts = ("random", ctx.where) if "site" not in expr else ("random", ctx.where, expr["site"])
    return rng.uniforms(frame.ids, rng.key(ctx.seed, *parts))


def _call(expr, frame, ctx):
    name = expr["call"]
    if name == "random":
        return _draws(expr, frame, ctx)
    values = [evaluate(a, frame, ctx) for a in expr["args"]]
    if name == "choice":
        return _choice(values, _draws(expr, frame, ctx))
    if name in ("argmin", "argmax"):
        return _arg_best(name, values[0], frame.size)
    if name in ("fixed", "percent") and any(is_vector(v) for v in values):
        fn = FUNCTIONS[name]
        return np.array([fn(*row) for row in zip(*[_to_array(v, frame.size).tolist() for v in values])], dtype=object)
    if not any(is_vector(v) for v in values):
        return FUNCTIONS[name](*values)
    if name == "round":
        digits = int(values[1]) if len(values) > 1 else 0
        return np.round(np.asarray(values[0], dtype=float), digits)
    if name in ("min", "max") and len(values) > 1:
        fn = np.minimum if name == "min" else np.maximum
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return out
    if name == "clamp":
        return np.clip(values[0], values[1], values[2])
    if name == "str":
        return np.array([format_value(x) for x in values[0]], dtype=object)
    if name in _NP_FUNCTIONS:
        with np.errstate(invalid="ignore", divide="ignore"):
            return _NP_FUNCTIONS[name](np.asarray(values[0], dtype=float))
    raise EvalError(f"`{name}` of per-agent values is not supported")


def _choice(values: list, u: np.ndarray):
    """Per agent, one of `items` drawn with `weights` (each a number or one per agent), from the uniforms `u`."""
    items, weights = values[0], values[1] if len(values) > 1 else None
    if not isinstance(items, list) or not items:
        raise EvalError("choice(...) needs a non-empty list of items")
    k, n = len(items), len(u)
    if weights is None:
        w = np.ones((k, n))
    else:
        if not isinstance(weights, list) or len(weights) != k:
            raise EvalError(f"choice(...) has {k} items and {len(weights) if isinstance(weights, list) else 1} weights")
        w = np.vstack([np.broadcast_to(np.nan_to_num(np.asarray(x, dtype=float), nan=0.0), (n,)) for x in weights])
    if (w < 0).any():
        raise EvalError("choice(...) weights must not be negative")
    total = w.sum(axis=0)
    cumulative = np.cumsum(w, axis=0) / np.where(total > 0, total, 1.0)
    index = np.minimum((cumulative <= u).sum(axis=0), k - 1)
    vectors = [np.broadcast_to(np.asarray(v, dtype=object if isinstance(v, str) or (is_vector(v) and np.asarray(v).dtype == object) else None), (n,))
               for v in items]
    out = np.empty(n, dtype=object if any(a.dtype == object for a in vectors) else np.float64)
    for j, a in enumerate(vectors):
        out[index == j] = a[index == j]
    if out.dtype != object:
        out[total <= 0] = np.nan  # no weight anywhere: no choice (missing)
    else:
        out[total <= 0] = None
    return out


def _arg_best(name: str, items, n: int):
    """Per agent, the index (0-based) of the smallest or largest item of a list; the first one on ties;
    missing when every item is missing."""
    if not isinstance(items, list) or not items:
        raise EvalError(f"{name}(...) needs a non-empty list")
    stack = np.vstack([np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in items])
    missing = np.isnan(stack)
    filled = np.where(missing, np.inf if name == "argmin" else -np.inf, stack)
    index = (np.argmin if name == "argmin" else np.argmax)(filled, axis=0).astype(np.float64)
    index[missing.all(axis=0)] = np.nan
    return index


# ------------------------------------------------------------------ templates
def render(expr: dict, frame: Frame, ctx: Context):
    """A template: one str when no part varies by agent, else a list of str (one per agent)."""
    parts = expr["template"]
    scalar_parts, vector_parts = [], []
    for p in parts:
        if isinstance(p, str):
            scalar_parts.append(p.replace("{", "{{").replace("}", "}}"))
            continue
        value = evaluate(p, frame, ctx)
        if is_vector(value):
            vector_parts.append(render_column(value, _type_of(p, frame)))
            scalar_parts.append("{}")
        else:
            scalar_parts.append(_format_scalar(value, _type_of(p, frame)).replace("{", "{{").replace("}", "}}"))
    fmt = "".join(scalar_parts)
    if not vector_parts:
        return fmt.format()
    out = np.empty(frame.size, dtype=object)
    out[:] = [fmt.format(*row) for row in zip(*vector_parts)]
    return out


def _type_of(expr, frame: Frame) -> dict | None:
    if "col" in expr:
        return frame.types.get(expr["col"])
    return None


def _format_scalar(value, ty) -> str:
    if ty and ty.get("kind") == "int" and isinstance(value, float) and value == value:
        return str(int(value))
    return format_value(value)


def render_column(values, ty: dict | None) -> list[str]:
    """Per-agent values as prompt text: whole numbers without `.0`, missing values as `missing`."""
    kind = (ty or {}).get("kind")
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if arr.dtype.kind in "iu":
        return [str(x) for x in arr.tolist()]
    if arr.dtype.kind == "b":
        return ["true" if x else "false" for x in arr.tolist()]
    if arr.dtype.kind == "f":
        if kind in ("int", "bool"):
            return [("missing" if x != x else (("true" if x else "false") if kind == "bool" else str(int(x))))
                    for x in arr.tolist()]
        return [format_value(x) for x in arr.tolist()]
    return ["missing" if x is None else (x if isinstance(x, str) else format_value(x)) for x in arr.tolist()]
