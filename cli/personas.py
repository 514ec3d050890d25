"""`populace personas`: sample a population's personas without running the simulation, and summarise them.

In: a compiled plan (with any --set and --seed applied), a population, how many agents to show and
how many to summarise. Out: the first n agents' personas as a rich table, JSON lines or CSV, then
one line per field describing its distribution over the first `summary` agents. The personas come
from runtime.personas.sample with the run's seed, so agent i here is agent i of personas.parquet.

Written fields call their model as a run would: a mock model writes offline; an LLM model only when
its API key is set (otherwise the field and anything derived from it are left out, and the output
says so). The summary never pays for text: LLM-written fields are counted (distinct combinations,
hence calls in a run) over the summary sample but not written.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from populace.compiler.plan import Model, Persona
from populace.compiler.plan.codec import from_json

from populace.compiler.plan.evaluate import format_value

from populace.runtime.personas import sampling as personas

OFFLINE = ("mock",)
MOST_COMMON = 5  # values listed for a text field with few distinct values
FEW_TEXTS = 20


@dataclass
class Sampled:
    """Personas of agents [0, n) and what could not be sampled (field -> why)."""

    population: str
    persona: str
    columns: dict
    types: dict
    left_out: dict = field(default_factory=dict)


def pick_population(plan: dict, name: str | None) -> str:
    """The named population, or the first one declared that has a persona."""
    pops = plan["populations"]
    if name is not None:
        if name not in pops:
            raise ValueError(f"no population `{name}`; populations: {', '.join(sorted(pops)) or '-'}")
        if not pops[name]["persona"]:
            raise ValueError(f"population `{name}` has no persona")
        return name
    with_persona = [p for p in pops.values() if p["persona"]]
    if not with_persona:
        raise ValueError("no population of this scenario has a persona")
    first = min(with_persona, key=lambda p: (p["span"]["file"] != plan["scenario"]["source"], p["span"]["line"],
                                              p["span"]["column"]))
    return first["name"]


def unavailable_models(plan: dict, persona: dict, environ=os.environ) -> dict:
    """Models of written fields that cannot write here: model -> the reason."""
    out = {}
    for f in persona["fields"]:
        if f["kind"] != "write" or f["model"] in out:
            continue
        model = plan["models"][f["model"]]
        key_env = model["settings"].get("api_key_env")
        if model["provider"] == "python":
            out[f["model"]] = f"model `{f['model']}` is a python policy, which cannot write text"
        elif model["provider"] not in OFFLINE and key_env and not environ.get(key_env):
            out[f["model"]] = (f"written by model `{f['model']}` ({model['provider']}): set {key_env} to write it "
                               f"(each text is an API call)")
    return out


def field_refs(f: dict) -> set:
    """The persona fields a field's value depends on."""
    out = set(f.get("reuse_per") or ())
    if f["kind"] == "by":
        out.add(f["on"])
    _collect_refs(f.get("expr"), out)
    _collect_refs(f.get("template"), out)
    return out


def _collect_refs(ir, out: set) -> None:
    if isinstance(ir, dict):
        if ir.get("src") == "persona" and "col" in ir:
            out.add(ir["col"])
        for v in ir.values():
            _collect_refs(v, out)
    elif isinstance(ir, list):
        for v in ir:
            _collect_refs(v, out)


def without(persona: dict, drop: dict) -> tuple[dict, dict]:
    """The persona minus the fields in `drop` (name -> why) and every field that depends on them."""
    left_out = dict(drop)
    kept = []
    for f in persona["fields"]:  # fields are in evaluation order: a dependency comes first
        if f["name"] in left_out:
            continue
        missing = sorted(field_refs(f) & set(left_out))
        if missing:
            left_out[f["name"]] = f"derived from {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} left out"
            continue
        kept.append(f)
    return dict(persona, fields=kept), left_out


def sample_personas(plan: dict, population: str, n: int, write=None, environ=os.environ,
                    written: bool = True) -> Sampled:
    """Personas of agents [0, n): exactly what a run with this plan writes to personas.parquet."""
    pop = plan["populations"][population]
    persona = plan["personas"][pop["persona"]]
    seed = plan["scenario"]["seed"]
    own = [plan["agents"][part["agent"]]["persona"] for part in pop["mixture"]]
    if len(set(own)) > 1:  # kinds with personas of their own (none of them has written fields)
        columns, types = personas.sample_kinds(
            [from_json(Persona, plan["personas"][p]) if p else None for p in own],
            [(part["start"], part["start"] + part["count"]) for part in pop["mixture"]], 0, min(n, pop["size"]), seed)
        fields = [f for p in dict.fromkeys(own) if p for f in plan["personas"][p]["fields"]]
        merged = dict(persona, name=" + ".join(p for p in dict.fromkeys(own) if p), fields=fields)
        return Sampled(population, merged["name"], columns, types, {})
    if written:
        drop = {f["name"]: unavailable_models(plan, persona, environ)[f["model"]] for f in persona["fields"]
                if f["kind"] == "write" and f["model"] in unavailable_models(plan, persona, environ)}
    else:  # the summary: only offline models write; LLM-written fields are counted, not written
        drop = {f["name"]: "not written for the summary" for f in persona["fields"]
                if f["kind"] == "write" and plan["models"][f["model"]]["provider"] not in OFFLINE}
    sampled_persona, left_out = without(persona, drop)
    if write is None:
        write = model_writer(plan, seed, environ)
    columns = personas.sample(from_json(Persona, sampled_persona), 0, min(n, pop["size"]), seed, write=write)
    types = personas.column_types(from_json(Persona, persona))
    return Sampled(population, persona["name"], columns, {k: types.get(k, {"kind": "any"}) for k in columns}, left_out)


def model_writer(plan: dict, seed: int, environ=os.environ, options: dict | None = None):
    """A `write(model, prompts)` for personas.sample that builds each model's client once, as a shard does."""
    from populace.runtime.models.base import make_model

    models: dict = {}

    def write(name: str, prompts: list[str]) -> list[str]:
        if name not in models:
            models[name] = make_model(from_json(Model, plan["models"][name]), 0, 1, dict(options or {}, environment=dict(environ)))
        return models[name].write(prompts, seed)

    return write


# ------------------------------------------------------------------ summary
def summarise(sampled: Sampled, persona: dict) -> list[tuple[str, str, str]]:
    """(field, kind, description) per field of the persona, over the sampled agents."""
    n = len(next(iter(sampled.columns.values()))) if sampled.columns else 0
    out = []
    by_name = {f["name"]: f for f in persona["fields"]}
    for name, values in sampled.columns.items():
        ty = sampled.types.get(name, {"kind": "any"})
        out.append((name, _kind_label(ty), describe(values, ty)))
    for name, why in sampled.left_out.items():
        f = by_name.get(name)
        if f is not None and f["kind"] == "write" and f.get("reuse_per") is not None and all(
                k in sampled.columns for k in f["reuse_per"]):
            codes, first = personas._combinations([sampled.columns[k] for k in f["reuse_per"]], n)
            text = (f"{len(first):,} distinct combinations of ({', '.join(f['reuse_per'])}) over {n:,} agents: "
                    f"{len(first):,} calls to `{f['model']}` in a run of that size (not written here)")
        elif f is not None and f["kind"] == "write" and f.get("reuse_per") is None:
            text = f"one text per agent: {n:,} calls to `{f['model']}` in a run of that size (not written here)"
        else:
            text = why
        out.append((name, "text" if f is not None and f["kind"] == "write" else "left out", text))
    order = [f["name"] for f in persona["fields"]]
    return sorted(out, key=lambda row: (order.index(row[0].split(".")[0]) if row[0].split(".")[0] in order else 0))


def _kind_label(ty: dict) -> str:
    kind = ty.get("kind", "any")
    return {"enum": "category", "bool": "bool", "int": "int", "float": "float", "str": "text"}.get(kind, kind)


def describe(values: np.ndarray, ty: dict) -> str:
    """One line: shares for categories and bools, moments and quartiles for numbers, distinct count for texts."""
    kind = ty.get("kind", "any")
    n = len(values)
    if n == 0:
        return "no agents"
    if kind in ("enum", "bool") or values.dtype.kind == "b":
        counts = _counts(values)
        order = list(ty.get("values", ())) if kind == "enum" else [True, False]
        ranked = sorted(counts.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), -kv[1]))
        return ", ".join(f"{_show(v)} {c:,} ({c / n:.1%})" for v, c in ranked)
    if values.dtype.kind in "iuf":
        nums = values.astype(float)
        missing = int(np.isnan(nums).sum())
        nums = nums[~np.isnan(nums)]
        if not len(nums):
            return f"all {n:,} missing"
        q1, median, q3 = np.quantile(nums, [0.25, 0.5, 0.75])
        text = (f"mean {_num(nums.mean())}, sd {_num(nums.std(ddof=1) if len(nums) > 1 else 0.0)}, min {_num(nums.min())}, "
                f"25% {_num(q1)}, median {_num(median)}, 75% {_num(q3)}, max {_num(nums.max())}")
        return text + (f"; {missing:,} missing" if missing else "")
    counts = _counts(values)
    text = f"{len(counts):,} distinct"
    if len(counts) <= FEW_TEXTS:
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:MOST_COMMON]
        text += ": " + ", ".join(f"{_show(v, 40)} {c / n:.1%}" for v, c in top)
    return text


def _counts(values: np.ndarray) -> dict:
    counts: dict = {}
    for v in values.tolist():
        counts[v] = counts.get(v, 0) + 1
    return counts


def _num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.1f}"
    return f"{x:.4g}"


def _show(v, width: int | None = None) -> str:
    if isinstance(v, str):
        text = v if width is None or len(v) <= width else v[: width - 1] + "…"
        return json.dumps(text, ensure_ascii=False)
    return format_value(v)


# ------------------------------------------------------------------ output
def rows(sampled: Sampled) -> list[dict]:
    """One dict per agent: `agent` (its id) then each column, as plain Python values."""
    n = len(next(iter(sampled.columns.values()))) if sampled.columns else 0
    plain = {k: _plain_column(v) for k, v in sampled.columns.items()}
    return [{"agent": i, **{k: v[i] for k, v in plain.items()}} for i in range(n)]


def _plain_column(values: np.ndarray) -> list:
    out = values.tolist()
    if values.dtype.kind == "f":
        out = [None if isinstance(x, float) and math.isnan(x) else x for x in out]
    return out


def print_jsonl(sampled: Sampled, out) -> None:
    for row in rows(sampled):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def print_csv(sampled: Sampled, out) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["agent", *sampled.columns])
    for row in rows(sampled):
        writer.writerow(["" if v is None else (format_value(v) if isinstance(v, bool) else v) for v in row.values()])


def print_table(sampled: Sampled, console) -> None:
    from rich.table import Table

    table = Table(title=f"{sampled.population}: persona {sampled.persona}, agents 0 to "
                        f"{len(next(iter(sampled.columns.values()), [])) - 1}", title_justify="left")
    table.add_column("agent", justify="right")
    for name in sampled.columns:
        numeric = sampled.columns[name].dtype.kind in "iuf"
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows(sampled):
        table.add_row(*(("-" if v is None else format_value(v)) if not isinstance(v, str) else v for v in row.values()))
    console.print(table)


def print_summary(summary: list[tuple[str, str, str]], agents: int, console) -> None:
    from rich.table import Table

    table = Table(title=f"Distribution of each field over agents 0 to {agents - 1:,}", title_justify="left")
    table.add_column("field")
    table.add_column("kind")
    table.add_column("distribution", overflow="fold")
    for name, kind, text in summary:
        table.add_row(name, kind, text)
    console.print(table)


def run(plan: dict, population: str | None, n: int, fmt: str, summary_size: int | None,
        environ=None, out=None, err=None, options: dict | None = None) -> int:
    """The command: print n personas in `fmt`, then the summary (to stderr for jsonl and csv)."""
    from rich.console import Console

    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        name = pick_population(plan, population)
    except ValueError as e:
        print(f"error: {e}", file=err)
        return 1
    pop = plan["populations"][name]
    persona = plan["personas"][pop["persona"]]
    write = model_writer(plan, plan["scenario"]["seed"], environ, options)
    shown = sample_personas(plan, name, n, write=write, environ=environ)
    notes = Console(file=err, highlight=False, soft_wrap=True)
    if fmt == "jsonl":
        print_jsonl(shown, out)
    elif fmt == "csv":
        print_csv(shown, out)
    else:
        print_table(shown, Console(file=out, highlight=False))
    for field_name, why in shown.left_out.items():
        notes.print(f"note: `{field_name}` is left out: {why}", markup=False)
    size = pop["size"] if summary_size is None else min(summary_size, pop["size"])
    if size <= 0:
        return 0
    big = sample_personas(plan, name, size, write=write, environ=environ, written=False)
    if fmt == "table":
        print_summary(summarise(big, persona), size, Console(file=out, highlight=False))
    else:  # machine-readable rows on stdout; the summary as plain lines on stderr
        err.write(f"Distribution of each field over agents 0 to {size - 1:,}\n")
        for name, kind, text in summarise(big, persona):
            err.write(f"  {name} ({kind}): {text}\n")
    return 0
