"""Values the driver needs: one value of an expression, and the context a shard step gets.

In: plan expressions (JSON), the driver's variables and environment values, the executor's shards.
Out: one Python value (conditions, `let`, records, environment updates), or a step's context for
the shards: variables, shared environment values and every aggregate the step's expressions hold,
computed map-reduce style (one partials call per population; shards send partials, never rows).
Python environment kinds' queries run here, in the driver, and travel to shards as values.
"""
from __future__ import annotations

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
                   "where": step.id + label}
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
                values[agg_key(spec)] = concat(self.executor.call(pop, "column", spec["arg"], context))
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
                       "seed": self.plan.seed, "where": ""}
            per_shard = self.executor.call(pop, "partials", ordered, context)
            for i, spec in enumerate(ordered):
                values[agg_key(spec)] = combine(spec, [parts[i] for parts in per_shard])
        return values

    def value(self, expr, variables, step):
        aggregates = self.aggregates(expr, variables)

        def resolve(node):
            if "var" in node:
                return variables[node["var"]]
            if "method" in node:
                return self.method_here(node, variables, step)
            if "env" in node:
                return self.env[node["env"]][node["field"]]
            if "agg" in node:
                return aggregates[agg_key(node)]
            raise EvalError(f"cannot evaluate {sorted(node)} here")

        try:
            return evaluate(expr, resolve)
        except EvalError as e:
            raise RunFailed(e.message, step) from None


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
