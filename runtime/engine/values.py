"""Values the driver needs: one value of an expression, and the context a shard step gets.

In: plan expressions (JSON), the driver's variables and environment values, the executor's shards.
Out: one Python value (conditions, `let`, records, environment updates), or a step's context for
the shards: variables, shared environment values and every aggregate the step's expressions hold,
computed map-reduce style (one partials call per population; shards send partials, never rows).
Python environment kinds' queries run here, in the driver, and travel to shards as values.
"""
from __future__ import annotations

import json

import numpy as np

from populace.compiler.plan.evaluate import EvalError, evaluate
from populace.compiler.plan.extensions import ExtensionError
from populace.runtime.columns.aggregates import combine
from populace.runtime.columns.vector import agg_key
from populace.runtime.environments import builtin as environments
from populace.runtime.environments import groups

from .errors import RunFailed


class Values:
    def __init__(self, driver):
        self.driver = driver
        self.plan = driver.plan

    @property
    def executor(self):
        return self.driver.executor

    @property
    def env(self) -> dict:
        return self.driver.env

    def context(self, variables, step, label, exprs) -> dict:
        aggregates = {}
        for expr in exprs:
            if expr is not None:
                aggregates.update(self.aggregates(expr, variables))
        aggregates.update(self.queries(exprs, variables, step))
        context = {"variables": variables, "env": self.shared_env(), "aggregates": aggregates, "seed": self.plan.seed,
                   "where": step.id + label, "groups": dict(self.driver.regroups)}
        specs = [spec for expr in exprs if expr is not None for spec in environments.via_specs(expr)]
        if specs:
            aggregates.update(self.via_values(specs, dict(context, aggregates=dict(aggregates))))
        return context

    def via_values(self, specs, context) -> dict:
        """Group aggregates (map-reduce over shard partials, one value per group) and the columns
        that neighbour aggregates reduce over (one value per agent of the network's population)."""
        values = {}
        by_group: dict[str, list] = {}
        for spec in specs:
            if "group" in spec["via"]:
                by_group.setdefault(self.plan.groups[spec["via"]["group"]].population, []).append(spec)
            else:
                pop = self.plan.environments[spec["via"]["neighbors"]].population
                if environments.self_refs(spec):  # each neighbour against the agent: gather what it reads
                    wanted = environments.neighbour_columns(spec)
                    values[agg_key(spec)] = {"columns": {name: concat(self.executor.call(pop, "column", col, context))
                                                         for name, col in sorted(wanted.items())}}
                else:
                    values[agg_key(spec)] = concat(self.executor.call(pop, "column", spec["arg"], context,
                                                                      spec.get("where")))
        for pop, group_specs in by_group.items():
            per_shard = self.executor.call(pop, "group_partials", group_specs, context)
            for i, spec in enumerate(group_specs):
                values[agg_key(spec)] = groups.combine(spec, [parts[i] for parts in per_shard])
        return values

    def shared_env(self) -> dict:
        """The environment values shards see: a Python kind's state stays here (its queries travel
        as values, see queries), only its declared fields go out."""
        return {name: values if self.plan.environments[name].kind != "python"
                else {f: values[f] for f in self.plan.environments[name].fields}
                for name, values in self.env.items()}

    def queries(self, exprs, variables, step) -> dict:
        """Python environment queries inside `exprs`, computed here: agg_key(node) -> value (one
        value, or a numpy column over the environment's population that shards index by agent id)."""
        out = {}
        for node in walk(exprs):
            if "method" in node and "id" not in node and self.plan.environments[node["env"]].kind == "python":
                out[agg_key(node)] = self.query(node, variables, step)
        return out

    def method_here(self, node, variables, step):
        """An environment method's one value, in the driver (`record`, `let`, `if`, env updates)."""
        env = self.plan.environments[node["env"]]
        if env.kind == "python":
            value = self.query(node, variables, step)
            if isinstance(value, np.ndarray):
                raise RunFailed(f"{node['env']}.{node['method']}() is one value per agent; store it in a state "
                                "field first and aggregate that", step)
            return value
        if node["method"] == "recent":
            n = int(self.value(node["args"][0], variables, step))
            return list(self.env[env.name].get("posts", [])[-n:]) if n > 0 else []
        raise RunFailed(f"{node['env']}.{node['method']}() is one value per agent here; aggregate it in a prompt "
                        "or a state update instead", step)

    def query(self, node, variables, step):
        args = [self.value(a, variables, step) for a in node["args"]]
        try:
            return self.driver.extensions.query(node["env"], node["method"], self.env[node["env"]], args)
        except ExtensionError as e:
            raise RunFailed(str(e), step) from None
        except Exception as e:  # the user's method failed: the run stops with their error and our step
            raise RunFailed(f"{node['env']}.{node['method']}(): {type(e).__name__}: {e}", step) from None

    def aggregates(self, expr, variables) -> dict:
        """Compute every population aggregate inside `expr` with one partials call per population."""
        specs: dict[str, list] = {}
        for node in walk(expr):
            if "agg" in node and "via" not in node:
                specs.setdefault(node["pop"], []).append(node)
        values = {}
        for pop, nodes in specs.items():
            unique = {agg_key(n): n for n in nodes}
            ordered = [unique[k] for k in sorted(unique)]
            context = {"variables": variables, "env": self.shared_env(), "aggregates": self.queries(nodes, variables, None),
                       "seed": self.plan.seed, "where": "", "groups": dict(self.driver.regroups)}
            per_shard = self.executor.call(pop, "partials", ordered, context)
            for i, spec in enumerate(ordered):
                values[agg_key(spec)] = combine(spec, [parts[i] for parts in per_shard])
        return values

    def keyed_rows(self, step, variables) -> list[dict]:
        """`record ... by k`: one row per value of the keys, each item's aggregates over that group's
        agents (one keyed partials call per population; other values are the same in every row)."""
        pop = step.by[0].value.get("pop") if isinstance(step.by[0].value, dict) else None
        keys = [item.value for item in step.by]
        specs = {}
        for item in step.items:
            for node in walk(item.value):
                if "agg" in node and "via" not in node and node.get("pop") == pop:
                    specs[agg_key(node)] = node
        ordered = [specs[k] for k in sorted(specs)]
        context = {"variables": variables, "env": self.shared_env(), "aggregates": self.queries(ordered, variables, None),
                   "seed": self.plan.seed, "where": "", "groups": dict(self.driver.regroups)}
        per_shard = self.executor.call(pop, "keyed_partials", keys, ordered, context) if ordered else []
        combined = {agg_key(spec): groups.combine(spec, [parts[i] for parts in per_shard]) for i, spec in enumerate(ordered)}
        if not ordered:  # only keys: the groups come from a count
            count = {"agg": "count", "arg": {"lit": True}, "pop": pop, "params": {}}
            per_shard = self.executor.call(pop, "keyed_partials", keys, [count], context)
            combined["_keys"] = groups.combine(count, [parts[0] for parts in per_shard])
        all_keys = sorted({k for c in combined.values() for k in c["keys"].tolist()}, key=_sortable)
        rows = []
        for key in all_keys:
            # shards send one numeric key as itself, anything else as the JSON of the key values
            values = json.loads(key) if isinstance(key, str) else [key]
            row = {item.name: _plain(v) for item, v in zip(step.by, values)}

            def found(node, key=key):
                c = combined[agg_key(node)]
                hit = np.flatnonzero(c["keys"] == key) if c["keys"].dtype != object else \
                    [i for i, k in enumerate(c["keys"].tolist()) if k == key]
                return _plain(c["values"][hit[0]]) if len(hit) else (0 if node["agg"] == "count" else None)

            for item in step.items:
                row[item.name] = self.value(item.value, variables, step, found if ordered else None, pop)
            rows.append(row)
        return rows

    def value(self, expr, variables, step, keyed=None, keyed_pop=None):
        """One value of `expr`; with `keyed`, the aggregates over `keyed_pop` come from it (a grouped record)."""
        if keyed is not None:
            aggregates = self.aggregates(_without_pop(expr, keyed_pop), variables)

            def resolve(node):
                if "agg" in node and "via" not in node and node.get("pop") == keyed_pop:
                    return keyed(node)
                return self._resolve(node, variables, step, aggregates)

            try:
                return evaluate(expr, resolve)
            except EvalError as e:
                raise RunFailed(e.message, step) from None
        return self._value(expr, variables, step)

    def _resolve(self, node, variables, step, aggregates):
        if "var" in node:
            return variables[node["var"]]
        if "method" in node:
            return self.method_here(node, variables, step)
        if "env" in node:
            return self.env[node["env"]][node["field"]]
        if "agg" in node:
            return aggregates[agg_key(node)]
        raise EvalError(f"cannot evaluate {sorted(node)} here")

    def _value(self, expr, variables, step):
        aggregates = self.aggregates(expr, variables)
        try:
            return evaluate(expr, lambda node: self._resolve(node, variables, step, aggregates))
        except EvalError as e:
            raise RunFailed(e.message, step) from None


def _sortable(key):
    return (0, key, "") if isinstance(key, (int, float)) else (1, 0, str(key))


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _without_pop(expr, pop):
    """`expr` with the aggregates over `pop` taken out (a grouped record computes those per group)."""
    if isinstance(expr, dict):
        if "agg" in expr and "via" not in expr and expr.get("pop") == pop:
            return {"lit": None}
        return {k: _without_pop(v, pop) for k, v in expr.items()}
    if isinstance(expr, list):
        return [_without_pop(v, pop) for v in expr]
    return expr


def concat(parts: list) -> np.ndarray:
    """Shards' columns, in shard order, as one column of the population."""
    if any(p.dtype == object for p in parts):
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        out[:] = [v for p in parts for v in p.tolist()]
        return out
    return np.concatenate(parts) if parts else np.zeros(0)


def walk(expr):
    """Every node of a plan expression (or a list of them), depth first."""
    if isinstance(expr, dict):
        yield expr
        for v in expr.values():
            yield from walk(v)
    elif isinstance(expr, (list, tuple)):
        for v in expr:
            yield from walk(v)
