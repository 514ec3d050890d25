"""Evaluate one plan expression to one value: the meaning of the plan's expression language.

In: an expression (plan JSON: {"lit"}, {"op"}, {"call"}, {"var"}, {"env"}, {"agg"}, ...) and a
resolver for the names that only a run knows (variables, environment fields, aggregates).
Out: a Python value. The compiler uses it to fold constants; the runtime's driver uses it for
conditions, `let`, `record` and environment updates. Per-agent (vectorised) evaluation lives in
the runtime; both follow the same operator table below so the two agree.
"""
from __future__ import annotations

import json
import math
from typing import Callable


class EvalError(Exception):
    """An expression could not be evaluated (division by zero, a missing value); survives pickling."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (EvalError, (self.message,))


def _div(a, b):
    if b == 0:
        raise EvalError("division by zero")
    return a / b


def _floordiv(a, b):
    if b == 0:
        raise EvalError("division by zero")
    return a // b


def _mod(a, b):
    if b == 0:
        raise EvalError("modulo by zero")
    return a % b


def _add(a, b):
    if isinstance(a, list) and not isinstance(b, list):
        return a + [b]  # `winners += x` appends
    return a + b


def _pow(a, b):
    # 2 ** 10 ** 10 would take minutes and gigabytes; no simulation needs numbers that large
    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0 and b * math.log2(abs(a)) > 4096:
        raise EvalError("the result of `**` is too large")
    return a ** b


BINARY: dict[str, Callable] = {
    "+": _add,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
    "//": _floordiv,
    "%": _mod,
    "**": _pow,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


def _round(x, n=0):
    return round(x) if n == 0 else round(x, int(n))


def _clamp(x, lo, hi):
    return max(lo, min(hi, x))


def _checked(fn, name):
    def call(*args):
        try:
            return fn(*args)
        except (ValueError, OverflowError, TypeError) as e:
            raise EvalError(f"{name}: {e}") from None

    return call


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and x != x)


def _fixed(x, digits=2):
    """`{{ x | fixed(2) }}`: exactly `digits` decimals (3.10, not 3.1)."""
    if _missing(x):
        return format_value(x)
    return f"{float(x):.{max(0, int(digits))}f}"


def _percent(x, digits=0):
    """`{{ share | percent }}`: 0.237 -> 24%; `percent(1)` -> 23.7%."""
    if _missing(x):
        return format_value(x)
    return f"{float(x) * 100:.{max(0, int(digits))}f}%"


def _arg_best(pick):
    def best(items):
        present = [(v, i) for i, v in enumerate(items) if not _missing(v)]
        if not present:
            return None
        return pick(present, key=lambda p: (p[0], p[1]) if pick is min else (p[0], -p[1]))[1]
    return best


FUNCTIONS: dict[str, Callable] = {
    "fixed": _fixed,
    "percent": _percent,
    "argmin": _arg_best(min),  # the index of the smallest item of a list (the first of equals)
    "argmax": _arg_best(max),
    "round": _round,
    "abs": abs,
    "floor": lambda x: math.floor(x),
    "ceil": lambda x: math.ceil(x),
    "sqrt": _checked(math.sqrt, "sqrt"),
    "log": _checked(math.log, "log"),
    "exp": _checked(math.exp, "exp"),
    "min": lambda *a: min(a[0]) if len(a) == 1 else min(a),
    "max": lambda *a: max(a[0]) if len(a) == 1 else max(a),
    "clamp": _clamp,
    "len": len,
    "str": lambda x: format_value(x),
    "int": _checked(int, "int"),
    "float": _checked(float, "float"),
    "join": lambda items, sep=", ": sep.join(format_value(i) for i in items),
    "last": lambda items, n=1: list(items[-int(n):]) if n else [],
}


def format_value(value) -> str:
    """How a value reads inside a prompt: floats to 4 decimals at most, lists as [a, b]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "missing"
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return text if text not in ("-0", "") else "0"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return "none"
    return str(value)


def evaluate(expr: dict, resolve: Callable[[dict], object] | None = None):
    """Evaluate `expr`; names (var, env, agg, col, random) go to `resolve`."""
    if "lit" in expr:
        return expr["lit"]
    if "op" in expr:
        op = expr["op"]
        args = expr["args"]
        if op == "and":
            return bool(evaluate(args[0], resolve)) and bool(evaluate(args[1], resolve))
        if op == "or":
            return bool(evaluate(args[0], resolve)) or bool(evaluate(args[1], resolve))
        if op == "not":
            return not evaluate(args[0], resolve)
        if op == "neg":
            return -evaluate(args[0], resolve)
        left, right = evaluate(args[0], resolve), evaluate(args[1], resolve)
        try:
            return BINARY[op](left, right)
        except TypeError as e:
            raise EvalError(f"`{op}` cannot combine {format_value(left)} and {format_value(right)}") from e
        except (OverflowError, ValueError):
            raise EvalError(f"the result of `{op}` is too large") from None
    if "if" in expr:
        branch = expr["then"] if evaluate(expr["if"], resolve) else expr["else"]
        return evaluate(branch, resolve)
    if "call" in expr:
        values = [evaluate(a, resolve) for a in expr["args"]]
        fn = FUNCTIONS.get(expr["call"])
        if fn is None:
            if resolve is None:
                raise EvalError(f"`{expr['call']}` needs a running simulation")
            return resolve(expr)
        return fn(*values)
    if "list" in expr:
        return [evaluate(e, resolve) for e in expr["list"]]
    if "record" in expr:
        return {k: evaluate(v, resolve) for k, v in expr["record"].items()}
    if "get" in expr:
        value = evaluate(expr["get"], resolve)
        if not isinstance(value, dict) or expr["field"] not in value:
            raise EvalError(f"no field `{expr['field']}`")
        return value[expr["field"]]
    if "index" in expr:
        seq, i = evaluate(expr["index"][0], resolve), evaluate(expr["index"][1], resolve)
        try:
            return seq[int(i)] if isinstance(seq, list) else seq[i]
        except (IndexError, KeyError, TypeError):
            raise EvalError(f"index {format_value(i)} is out of range") from None
    if "template" in expr:
        return "".join(p if isinstance(p, str) else format_value(evaluate(p, resolve)) for p in expr["template"])
    if resolve is None:
        raise EvalError("not a constant")
    return resolve(expr)


def is_constant(expr) -> bool:
    """True when `expr` holds no names: only literals, operators and pure functions."""
    if isinstance(expr, str):
        return True
    if isinstance(expr, list):
        return all(is_constant(e) for e in expr)
    if not isinstance(expr, dict):
        return True
    if any(k in expr for k in ("var", "env", "agg", "col", "self")):
        return False
    if "call" in expr and expr["call"] not in FUNCTIONS:
        return False
    return all(is_constant(v) for k, v in expr.items() if k not in ("lit", "span"))
