"""Pass 5, personas: each persona's fields as distributions, choices, tables and `write` prompts.

Reads: ctx.decls["persona"], ctx.decls["model"], ctx.params. Adds: ctx.persona_fields (field types) and
ctx.plan["personas"] (the fields in dependency order, as plan samplers).
"""
from __future__ import annotations

import csv
import json
import os
from graphlib import CycleError, TopologicalSorter

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context, Quiet, span_json
from ..expressions import Checker, Scope
from ..plan.tables import table_cell
from ..types import ANY, BOOL, FLOAT, INT, NUMERIC, STR, Ty, describe, to_json, type_of_value, unify_all
from ..values import constant


# ------------------------------------------------------------------ personas
DISTRIBUTIONS = {
    "uniform": (("low", "high"), FLOAT),
    "uniform_int": (("low", "high"), INT),
    "normal": (("mean", "sd"), FLOAT),
    "lognormal": (("mean", "sigma"), FLOAT),
    "beta": (("a", "b"), FLOAT),
    "bernoulli": (("p",), BOOL),
    "poisson": (("lam",), INT),
}
SPECIAL = ("choice", "sample", "by", "write")


def check_personas(ctx: Context) -> None:
    """Check each persona's distributions, derived fields and written backgrounds; order fields by use."""
    ctx.plan["personas"] = {}
    for name, decl in ctx.decls["persona"].items():
        fields: dict[str, Ty] = {}
        by_name: dict[str, n.PersonaField] = {}
        for f in decl.fields:
            if f.name in by_name:
                ctx.error("E1001", f.name_span, f"persona field `{f.name}` is declared twice")
                continue
            if f.name.startswith("_"):
                ctx.error("E1035", f.name_span, "names starting with `_` are private")
            by_name[f.name] = f
            fields[f.name] = ANY
        ctx.persona_fields[name] = fields
        # Two rounds: the first learns each field's type, the second checks uses against them.
        lowered, deps = {}, {}
        for _ in range(2):
            for f in by_name.values():
                scope = Scope("persona", persona=name)
                silent = _ in (0,)
                entry, ty = _persona_field(ctx if not silent else Quiet(ctx), f, scope)
                fields[f.name] = ty
                lowered[f.name] = entry
                deps[f.name] = set(scope.refs) - {f.name}
                if f.name in scope.refs:
                    if not silent:
                        ctx.error("E1026", f.span, f"`{f.name}` depends on itself")
        try:
            TopologicalSorter({k: sorted(v) for k, v in sorted(deps.items())}).prepare()
            order = _source_order_topological(list(by_name), deps)
        except CycleError as e:
            cycle = " -> ".join(reversed(e.args[1]))  # graphlib lists it against the direction of use
            first = by_name[e.args[1][0]]
            ctx.error("E1026", first.name_span, "persona fields depend on each other in a cycle",
                      hint=f"the cycle: {cycle} (each uses the next)")
            order = list(by_name)
        ctx.plan["personas"][name] = {
            "name": name, "span": span_json(decl.span),
            "fields": [dict(lowered[k], name=k, type=to_json(fields[k]), span=span_json(by_name[k].span))
                       for k in order if k in lowered],
        }


def _source_order_topological(names: list[str], deps: dict[str, set]) -> list[str]:
    # Keep the order the user wrote, moving a field only as far as its dependencies require.
    done, order = set(), []
    while len(order) < len(names):
        for name in names:
            if name not in done and deps.get(name, set()) & set(names) <= done:
                done.add(name)
                order.append(name)
                break
    return order


def _persona_field(ctx, f: n.PersonaField, scope: Scope) -> tuple[dict, Ty]:
    if not f.sampled:
        ty, ir = Checker(ctx, scope).expr(f.value)
        return {"kind": "derive", "expr": ir}, ty.scalar()
    value = f.value
    if not isinstance(value, n.Call) or not isinstance(value.func, n.Name):
        ctx.error("E1023", value.span, "`~` takes a distribution, e.g. uniform_int(18, 65)",
                  hint="use `=` for a value computed from other fields")
        return {"kind": "derive", "expr": {"lit": None}}, ANY
    fname = value.func.id
    if f.cases is not None and fname != "by":
        ctx.error("E1023", value.span, "a `{ ... }` table of cases follows only by(field)")
    if f.reuse_per is not None and fname != "write":
        ctx.error("E1027", f.span, "`reuse per` applies to write(...) only")
    if fname == "by":
        return _by(ctx, f, scope)
    if fname == "write":
        return _write(ctx, f, scope)
    if fname == "sample":
        return _table(ctx, value)
    dist, ty = distribution(ctx, value)
    return {"kind": "sample", "dist": dist}, ty


def distribution(ctx, call: n.Call) -> tuple[dict, Ty]:
    """A distribution call with constant arguments -> ({"name", "args"}, the sampled type)."""
    fname = call.func.id
    if fname == "choice":
        return _choice(ctx, call)
    if fname not in DISTRIBUTIONS:
        ctx.error("E1023", call.func.span, f"unknown distribution `{fname}`",
                  hint=did_you_mean(fname, list(DISTRIBUTIONS) + list(SPECIAL)) or
                  "distributions: " + ", ".join(sorted(list(DISTRIBUTIONS) + list(SPECIAL))))
        return {"name": "constant", "args": {"value": None}}, ANY
    names, ty = DISTRIBUTIONS[fname]
    args: dict = {}
    positional = [a for a in call.args if a.name is None and a.key is None]
    if len(positional) != len(names):
        ctx.error("E1023", call.span, f"{fname} takes {len(names)} number{'s' if len(names) > 1 else ''} "
                  f"({', '.join(names)}), not {len(positional)}", hint=f"e.g. {fname}({', '.join(_EXAMPLE[fname])})")
        return {"name": fname, "args": {}}, ty
    for key, arg in zip(names, positional):
        vty, v, ok = constant(ctx, arg.value, f"`{key}`")
        if ok and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            ctx.error("E1023", arg.span, f"`{key}` of {fname} must be a number, not {describe(vty)}")
            ok = False
        if ok:
            args[key] = v
    for arg in call.args:
        if arg.key is not None:
            ctx.error("E1023", arg.span, f"{fname} takes no `key: value` pairs")
        elif arg.name is not None:
            if arg.name not in ("clamp", "round") or fname not in ("normal", "lognormal", "uniform", "beta"):
                ctx.error("E1023", arg.span, f"{fname} has no option `{arg.name}`",
                          hint="normal, lognormal and uniform take clamp = [low, high] and round = digits")
                continue
            vty, v, ok = constant(ctx, arg.value, f"`{arg.name}`")
            if not ok:
                continue
            if arg.name == "clamp":
                if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1]):
                    ctx.error("E1023", arg.value.span, "clamp takes [low, high] with low <= high")
                    continue
                args["clamp"] = v
            else:
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    ctx.error("E1023", arg.value.span, "round takes a number of decimal digits (0 gives whole numbers)")
                    continue
                args["round"] = v
                if v == 0:
                    ty = INT
    _check_params(ctx, call, fname, args)
    if "clamp" in args and ty.kind in NUMERIC:
        ty = Ty(ty.kind, low=args["clamp"][0], high=args["clamp"][1])
    elif fname in ("uniform", "uniform_int") and "low" in args and "high" in args:
        ty = Ty(ty.kind, low=args["low"], high=args["high"])
    elif fname == "beta":
        ty = Ty("float", low=0.0, high=1.0)
    return {"name": fname, "args": args}, ty


_EXAMPLE = {"uniform": ("0", "1"), "uniform_int": ("18", "65"), "normal": ("170", "10"), "lognormal": ("10", "0.5"),
            "beta": ("2", "5"), "bernoulli": ("0.3",), "poisson": ("3",)}


def _check_params(ctx, call, fname, args) -> None:
    def bad(msg):
        ctx.error("E1023", call.span, f"{fname}: {msg}")

    if fname in ("uniform", "uniform_int") and {"low", "high"} <= args.keys() and args["low"] > args["high"]:
        bad("low is above high")
    if fname == "uniform_int" and any(not float(args.get(k, 0)).is_integer() for k in ("low", "high")):
        bad("the ends must be whole numbers")
    if fname in ("normal", "lognormal") and args.get("sd", args.get("sigma", 1)) < 0:
        bad("the spread must not be negative")
    if fname == "beta" and (args.get("a", 1) <= 0 or args.get("b", 1) <= 0):
        bad("a and b must be positive")
    if fname == "bernoulli" and not 0 <= args.get("p", 0) <= 1:
        bad("p must be between 0 and 1")
    if fname == "poisson" and args.get("lam", 0) < 0:
        bad("lam must not be negative")


def _choice(ctx, call: n.Call) -> tuple[dict, Ty]:
    values, weights = [], []
    pairs = [a for a in call.args if a.key is not None]
    plain = [a for a in call.args if a.key is None and a.name is None]
    if any(a.name is not None for a in call.args):
        ctx.error("E1023", call.span, "choice takes values, or value: weight pairs")
    if pairs and plain:
        ctx.error("E1023", call.span, "choice takes either all values with weights or none",
                  hint='choice("a": 2, "b": 1) or choice("a", "b")')
        return {"name": "choice", "values": [], "weights": []}, ANY
    if not call.args:
        ctx.error("E1023", call.span, "choice needs at least one value")
        return {"name": "choice", "values": [], "weights": []}, ANY
    for arg in call.args:
        key = arg.key if arg.key is not None else arg.value
        _, v, ok = constant(ctx, key, "a choice value")
        if not ok:
            continue
        if v in values:
            ctx.error("E1023", key.span, f"{v!r} appears twice in choice")
            continue
        w = 1
        if arg.key is not None:
            _, w, okw = constant(ctx, arg.value, "a weight")
            if not okw or not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                ctx.error("E1024", arg.value.span, "a weight must be a number >= 0")
                continue
        values.append(v)
        weights.append(float(w))
    if values and sum(weights) <= 0:
        ctx.error("E1024", call.span, "the weights add up to zero", hint="give at least one value a positive weight")
    if all(isinstance(v, str) for v in values):
        ty = Ty("enum", values=tuple(values))
    else:
        ty = unify_all([type_of_value(v) for v in values])
    total = sum(weights) or 1.0
    return {"name": "choice", "values": values, "weights": [w / total for w in weights]}, ty


def _by(ctx, f: n.PersonaField, scope: Scope) -> tuple[dict, Ty]:
    call = f.value
    if len(call.args) != 1 or not isinstance(call.args[0].value, n.Name):
        ctx.error("E1023", call.span, "by(...) names one persona field, e.g. by(occupation) { ... }")
        return {"kind": "derive", "expr": {"lit": None}}, ANY
    on = call.args[0].value
    on_ty, _ = Checker(ctx, scope).expr(on)
    if not f.cases:
        ctx.error("E1023", call.span, "by(...) needs a table of cases", hint='by(occupation) { "teacher": normal(45000, 5000) }')
        return {"kind": "derive", "expr": {"lit": None}}, ANY
    cases, default, types = [], None, []
    for case in f.cases:
        if not isinstance(case.value, n.Call) or not isinstance(case.value.func, n.Name):
            ctx.error("E1023", case.value.span, "each case is a distribution, e.g. normal(45000, 5000)")
            continue
        dist, ty = distribution(ctx, case.value)
        types.append(ty)
        if case.key_text == "else":
            default = dist
            continue
        if on_ty.kind == "enum" and case.key not in on_ty.values:
            ctx.error("E1023", case.span, f"{case.key_text} is not a value of `{on.id}`",
                      hint=did_you_mean(str(case.key), [str(v) for v in on_ty.values]) or
                      f"values: {', '.join(map(str, on_ty.values))}")
        cases.append({"key": case.key, "dist": dist})
    if on_ty.kind == "enum" and default is None:
        missing = [v for v in on_ty.values if v not in [c["key"] for c in cases]]
        if missing:
            ctx.error("E1023", call.span, f"no case for {', '.join(map(repr, missing))}",
                      hint="add those cases, or an `else: ...` case")
    ty = unify_all(types) if types else ANY
    if ty.kind in NUMERIC:
        ty = Ty(ty.kind)
    return {"kind": "by", "on": on.id, "cases": cases, "default": default}, ty


def _write(ctx, f: n.PersonaField, scope: Scope) -> tuple[dict, Ty]:
    call = f.value
    if len(call.args) != 2 or not isinstance(call.args[0].value, n.Name):
        ctx.error("E1023", call.span, 'write takes a model and a template: write(model, "...")')
        return {"kind": "derive", "expr": {"lit": None}}, STR
    model = call.args[0].value
    if model.id not in ctx.decls["model"]:
        ctx.error("E1003", model.span, f"unknown model `{model.id}`", hint=did_you_mean(model.id, ctx.decls["model"]))
    ty, template = Checker(ctx, scope).expr(call.args[1].value)
    if ty.kind not in ("str", "any"):
        ctx.error("E1023", call.args[1].span, "the second argument of write is the prompt text")
    fields = ctx.persona_fields.get(scope.persona, {})
    for name in f.reuse_per or ():
        if name not in fields:
            ctx.error("E1027", f.span, f"`reuse per` names `{name}`, which is not a field of this persona",
                      hint=did_you_mean(name, fields))
        else:
            scope.refs.add(name)
    if f.reuse_per is not None:
        used = persona_refs(template)
        missing = sorted(used - set(f.reuse_per))
        if missing:
            ctx.warning("W1001", f.span, f"the prompt uses {', '.join(missing)}, not in `reuse per`",
                        hint="agents sharing a text may differ in those fields; add them to reuse per")
    return {"kind": "write", "model": model.id, "template": template,
            "reuse_per": list(f.reuse_per) if f.reuse_per is not None else None}, STR


def persona_refs(ir) -> set:
    """The persona fields a plan expression reads directly (not through a group or neighbours)."""
    out = set()
    if isinstance(ir, dict):
        if ir.get("src") == "persona" and "col" in ir and "via" not in ir:
            out.add(ir["col"])
        for v in ir.values():
            out |= persona_refs(v)
    elif isinstance(ir, list):
        for v in ir:
            out |= persona_refs(v)
    return out


def _table(ctx, call: n.Call) -> tuple[dict, Ty]:
    if not call.args or call.args[0].name or not isinstance(call.args[0].value, n.Literal) \
            or call.args[0].value.kind != "str":
        ctx.error("E1025", call.span, 'sample takes a file name: sample("people.csv")')
        return {"kind": "table", "path": "", "mode": "replace"}, ANY
    rel = call.args[0].value.value
    base = os.path.dirname(call.span.file)
    path = os.path.normpath(os.path.join(base, rel))
    mode = "replace"
    for arg in call.args[1:]:
        _, v, ok = constant(ctx, arg.value, f"`{arg.name}`")
        if arg.name == "replace" and ok and isinstance(v, bool):
            mode = "replace" if v else "without"
        elif arg.name == "order" and ok and isinstance(v, bool):
            mode = "in_order" if v else mode
        else:
            ctx.error("E1025", arg.span, "sample takes replace = true|false or order = true")
    if not path.endswith((".csv", ".jsonl")):
        ctx.error("E1025", call.args[0].span, "a table is a .csv or .jsonl file")
        return {"kind": "table", "path": path, "mode": mode}, ANY
    columns = _table_columns(ctx, path, call.args[0].span)
    ty = Ty("record", fields=tuple(sorted(columns.items()))) if columns else ANY
    return {"kind": "table", "path": path, "mode": mode, "columns": {k: to_json(v) for k, v in sorted(columns.items())}}, ty


def _table_columns(ctx, path: str, span: n.Span) -> dict[str, Ty]:
    """Column names and types from the first rows of a table file (checked when it exists)."""
    if not os.path.exists(path):
        ctx.error("E1025", span, f"table file `{path}` does not exist", hint="paths are relative to the scenario file")
        return {}
    rows = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.endswith(".csv"):
                reader = csv.DictReader(fh)
                for i, row in enumerate(reader):
                    # DictReader files extra cells under None and fills missing ones with None
                    if None in row or None in row.values():
                        width = len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
                        ctx.error("E1025", span, f"line {reader.line_num} of `{path}` has {width} cells; "
                                  f"the header has {len(reader.fieldnames)} columns")
                        return {}
                    rows.append({k: table_cell(v) for k, v in row.items()})
                    if i >= 200:
                        break
            else:
                for i, line in enumerate(fh):
                    if line.strip():
                        rows.append(json.loads(line))
                    if i >= 200:
                        break
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        ctx.error("E1025", span, f"cannot read table `{path}`: {e}")
        return {}
    if not rows:
        ctx.error("E1025", span, f"table `{path}` has no rows")
        return {}
    cols: dict[str, list] = {}
    for row in rows:
        for k, v in row.items():
            cols.setdefault(k, []).append(v)
    return {k: unify_all([type_of_value(v) for v in vs]) for k, vs in cols.items()}
