"""Python environment kinds at run time: one instance per environment, called in the driver only.

In: the plan's `python` environments (`extension.class` = "module:Class", `params`), the
driver's environment values, and the method calls the workflow makes. Out: each environment's
first state (from `start`), query values (one value, or one per agent of its population) and
actions applied to the state.
Why only the driver: the state lives with the driver's other environment values, so it is
checkpointed in `driver.json` and every shard sees the same values within a step; shards
receive query results like aggregates. Only the driver's machine needs the extension's module.
"""
from __future__ import annotations

import json
import os

import numpy as np

from populace.compiler.extensions import ExtensionError, load_class, spec_of

from . import rng


class Extensions:
    """The plan's Python environments, loaded: name -> instance (params set as attributes)."""

    def __init__(self, plan):
        self.plan = plan
        self.instances: dict = {}
        self.specs: dict = {}
        for name, env in plan.environments.items():
            if env.kind != "python":
                continue
            raw = plan.raw["environments"][name]
            target = raw["extension"]["class"]
            span_file = raw["span"]["file"]
            folder = os.path.dirname(os.path.abspath(span_file)) if span_file else None
            cls = load_class(target, folder)
            try:
                obj = cls()
            except Exception as e:
                raise ExtensionError(f"{target}() failed: {type(e).__name__}: {e} (a kind is made without arguments; "
                                     "its params are set as attributes)") from None
            for key, value in env.params.items():
                setattr(obj, key, value)
            obj.name = name
            obj.seed = int(rng.key(plan.seed, "extension", name)) & 0x7FFFFFFF
            self.instances[name] = obj
            self.specs[name] = spec_of(cls)

    def problems(self) -> list[str]:
        """Methods the plan calls that the class no longer has (the module changed since compiling)."""
        out = []
        for step in self.plan.steps():
            for node in _method_nodes(step):
                name = node["env"]
                if name in self.specs and node["method"] not in self.specs[name].methods:
                    out.append(f"{step['id']}: {self.specs[name].target} has no method `{node['method']}` any more; "
                               "compile the scenario again")
        return out

    def size(self, name: str) -> int:
        pop = self.plan.environments[name].population
        return self.plan.populations[pop].size if pop else 0

    def start(self, name: str) -> dict:
        """The environment's first state: `start(agents)`, checked to be a dict of JSON values."""
        try:
            state = self.instances[name].start(self.size(name))
        except Exception as e:  # the user's start() failed: their message, not our traceback
            raise ExtensionError(f"{self.specs[name].target}.start failed: {type(e).__name__}: {e}") from None
        return _checked(self.specs[name], "start", state)

    def query(self, name: str, method: str, state: dict, args: list):
        spec = self.specs[name]
        m = spec.methods[method]
        value = getattr(self.instances[name], method)(state, *args)
        if m.per_agent:
            column = np.asarray(value)
            if column.ndim != 1 or len(column) != self.size(name):
                raise ExtensionError(f"{spec.target}.{method} returned {column.shape} values, "
                                     f"not one per agent ({self.size(name):,})")
            return column
        return _plain(value)

    def act(self, name: str, method: str, state: dict, args: list) -> dict:
        """Apply an action; the state it leaves (changed in place, or returned)."""
        result = getattr(self.instances[name], method)(state, *args)
        return _checked(self.specs[name], method, result if isinstance(result, dict) else state)


def _method_nodes(tree):
    if isinstance(tree, dict):
        if "method" in tree and "env" in tree:
            yield tree
        for v in tree.values():
            yield from _method_nodes(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _method_nodes(v)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value


def _checked(spec, method: str, state) -> dict:
    if not isinstance(state, dict):
        raise ExtensionError(f"{spec.target}.{method} must leave the state a dict, not {type(state).__name__}")
    try:
        json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as e:
        # the state is checkpointed as JSON: say so now, not when the checkpoint fails
        raise ExtensionError(f"{spec.target}.{method} left a state that is not JSON ({e}); keep numbers, "
                             "strings, lists and dicts in it") from None
    return state
