"""The compiler's types: what a value can be, and whether it is one value or one per agent.

In: dsl TypeExpr nodes (outputs, state, params) and literal values. Out: Ty values, and their JSON
form for the plan (`{"kind": "int", "min": 0, "max": 100}`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

NUMERIC = ("int", "float")


@dataclass(frozen=True, slots=True)
class Ty:
    kind: str  # int float bool str none list record enum any
    item: "Ty | None" = None  # list item
    fields: tuple[tuple[str, "Ty"], ...] = ()  # record fields
    values: tuple = ()  # enum values
    low: float | None = None
    high: float | None = None
    per_agent: bool = False  # one value per agent (a column), not one value
    pop: str | None = None  # the population a per-agent value belongs to

    def __str__(self) -> str:
        base = describe(self)
        return f"per-agent {base}" if self.per_agent else base

    @property
    def numeric(self) -> bool:
        return self.kind in NUMERIC or self.kind == "bool"

    def scalar(self) -> "Ty":
        return replace(self, per_agent=False, pop=None)

    def column(self, pop: str | None) -> "Ty":
        return replace(self, per_agent=True, pop=pop)


def describe(t: Ty) -> str:
    if t.kind == "list":
        return f"list[{describe(t.item) if t.item else 'any'}]"
    if t.kind == "enum":
        return "enum(" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in t.values) + ")"
    if t.kind == "record":
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in t.fields) + "}"
    if t.kind in NUMERIC and (t.low is not None or t.high is not None):
        return f"{t.kind} in {_num(t.low)}..{_num(t.high)}"
    return t.kind


def _num(x) -> str:
    return "?" if x is None else (str(int(x)) if float(x).is_integer() else repr(x))


INT, FLOAT, BOOL, STR, NONE, ANY = Ty("int"), Ty("float"), Ty("bool"), Ty("str"), Ty("none"), Ty("any")


def list_of(item: Ty) -> Ty:
    return Ty("list", item=item.scalar())


def type_of_value(value) -> Ty:
    """The type of a constant (a param default, an environment's initial value)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    if value is None:
        return NONE
    if isinstance(value, list):
        items = [type_of_value(v) for v in value]
        return list_of(unify_all(items) if items else ANY)
    if isinstance(value, dict):
        return Ty("record", fields=tuple((k, type_of_value(v)) for k, v in value.items()))
    return ANY


def unify(a: Ty, b: Ty) -> Ty | None:
    """The type both fit in (int and float give float), or None."""
    a, b = a.scalar(), b.scalar()
    if a.kind == "any":
        return b
    if b.kind == "any":
        return a
    if a.kind in NUMERIC and b.kind in NUMERIC:
        return FLOAT if "float" in (a.kind, b.kind) else INT
    if a.kind in ("enum", "str") and b.kind in ("enum", "str"):
        if a.kind == b.kind == "enum" and a.values == b.values:
            return a
        return STR
    if a.kind == b.kind == "list":
        item = unify(a.item or ANY, b.item or ANY)
        return list_of(item) if item else None
    if a.kind == b.kind and a.kind != "record":
        return a
    if a.kind == b.kind == "record" and a.fields == b.fields:
        return a
    if a.kind == "none":
        return b
    if b.kind == "none":
        return a
    return None


def unify_all(types) -> Ty:
    out = ANY
    for t in types:
        u = unify(out, t)
        if u is None:
            return ANY
        out = u
    return out


def assignable(target: Ty, value: Ty) -> bool:
    """Can a value of type `value` be stored where `target` is declared?"""
    t, v = target.scalar(), value.scalar()
    if t.kind == "any" or v.kind == "any":
        return True
    if t.kind == "float" and v.kind in NUMERIC:
        return True
    if t.kind == "int" and v.kind == "int":
        return True
    if t.kind == "str" and v.kind in ("str", "enum"):
        return True
    if t.kind == "enum" and v.kind == "enum":
        return set(v.values) <= set(t.values)
    if t.kind == "list" and v.kind == "list":
        return assignable(t.item or ANY, v.item or ANY)
    if t.kind == "record" and v.kind == "record":
        return dict(t.fields).keys() == dict(v.fields).keys() and all(
            assignable(tf, dict(v.fields)[k]) for k, tf in t.fields)
    return t.kind == v.kind


def to_json(t: Ty) -> dict:
    out: dict = {"kind": t.kind}
    if t.kind == "list":
        out["item"] = to_json(t.item or ANY)
    elif t.kind == "record":
        out["fields"] = {k: to_json(v) for k, v in t.fields}
    elif t.kind == "enum":
        out["values"] = list(t.values)
    if t.low is not None:
        out["min"] = t.low
    if t.high is not None:
        out["max"] = t.high
    return out


def from_json(d: dict) -> Ty:
    kind = d["kind"]
    return Ty(
        kind,
        item=from_json(d["item"]) if "item" in d else None,
        fields=tuple((k, from_json(v)) for k, v in d.get("fields", {}).items()),
        values=tuple(d.get("values", ())),
        low=d.get("min"),
        high=d.get("max"),
    )
