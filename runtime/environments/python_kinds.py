"""Python environment kinds at run time: one instance per environment, called in the driver only.

In: the plan's `python` environments (`extension.class` = "module:Class", its `signature`,
`params`), the driver's environment values, and the method calls the workflow makes. Out: each
environment's first state (from `start`), query values (one value, or one per agent of its
population) checked against their declared types, and actions applied to the state.
Why only the driver: the state lives with the driver's other environment values, so it is
checkpointed in `driver.json` and every shard sees the same values within a step; shards
receive query results like aggregates. Only the driver's machine needs the extension's module.
"""
from __future__ import annotations

import json
import os

import numpy as np

from populace.compiler.plan.extensions import Each, ExtensionError, load_class, spec_of

from populace.runtime.columns import rng


def scenario_folder(plan, given: str | None = None) -> str | None:
    """Where the scenario's own Python files are: `given` (the run knows it), else next to the
    scenario file as the plan names it (relative to the current directory)."""
    if given:
        return given
    source = plan.scenario.source
    return os.path.dirname(os.path.abspath(source)) if source else None


class Extensions:
    """The plan's Python environments, loaded: name -> instance (params set as attributes)."""

    def __init__(self, plan, folder: str | None = None):
        self.plan = plan
        self.instances: dict = {}
        self.specs: dict = {}
        folder = scenario_folder(plan, folder)
        for name, env in plan.environments.items():
            if env.kind != "python":
                continue
            extension = env.extension
            cls = load_class(extension.target, folder)
            spec = spec_of(cls)
            if spec.signature() != extension.signature:
                raise ExtensionError(f"{extension.target} changed since the scenario was compiled (its parameters "
                                     "or methods are declared differently); compile the scenario again")
            try:
                obj = cls()
            except Exception as e:
                raise ExtensionError(f"{extension.target}() failed: {type(e).__name__}: {e} (a kind is made "
                                     "without arguments; its params are set as attributes)") from None
            for key, value in env.params.items():
                setattr(obj, key, value)
            obj.name = name
            obj.seed = int(rng.key(plan.seed, "extension", name)) & 0x7FFFFFFF
            self.instances[name] = obj
            self.specs[name] = spec

    def size(self, name: str) -> int:
        pop = self.plan.environments[name].population
        return self.plan.populations[pop].size if pop else 0

    def start(self, name: str) -> dict:
        """The environment's first state: `start(agents)`, checked to be a dict of JSON values whose
        keys are not the names of the scenario's declared fields for it."""
        spec = self.specs[name]
        try:
            state = self.instances[name].start(self.size(name))
        except Exception as e:  # the user's start() failed: their message, not our traceback
            raise ExtensionError(f"{spec.target}.start failed: {type(e).__name__}: {e}") from None
        state = _checked(spec, "start", state)
        clash = sorted(set(state) & set(self.plan.environments[name].fields))
        if clash:
            raise ExtensionError(f"environment `{name}` declares a field `{clash[0]}`, which is also a key of "
                                 f"{spec.target}'s state; rename the field")
        return state

    def query(self, name: str, method: str, state: dict, args: list):
        spec = self.specs[name]
        m = spec.methods[method]
        where = f"{spec.target}.{method}"
        value = getattr(self.instances[name], method)(state, *args)
        if m.per_agent:
            n = self.size(name)
            values = value.tolist() if isinstance(value, np.ndarray) else value
            if not isinstance(values, (list, tuple)) or len(values) != n:
                count = (f"{len(values):,} value{'s' if len(values) != 1 else ''}" if isinstance(values, (list, tuple))
                         else f"one {type(value).__name__}")
                raise ExtensionError(f"{where} returned {count}, not one per agent ({n:,})")
            return _column([_typed(where, v, m.returns, missing_ok=True) for v in values], m.returns)
        return _typed(where, value, m.returns)

    def act(self, name: str, method: str, state: dict, args: list) -> dict:
        """Apply an action; the state it leaves (changed in place, or returned)."""
        spec = self.specs[name]
        result = getattr(self.instances[name], method)(state, *args)
        if result is not None and not isinstance(result, dict):
            raise ExtensionError(f"{spec.target}.{method} returned {type(result).__name__}; an action changes "
                                 "the state in place (returning None) or returns the new state (a dict)")
        return _checked(spec, method, state if result is None else result)

    def arguments(self, name: str, method: str, values: list) -> list:
        """An action's arguments as declared: per-agent columns arrive with NaN for a missing int or
        bool (numpy's way); the method gets Python ints, bools and None."""
        out = []
        for kind, value in zip(self.specs[name].methods[method].args, values):
            if isinstance(kind, Each):
                out.append([None if _missing(v) else _cast(v, kind.type) for v in value])
            else:
                out.append(value)
        return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _cast(v, t):
    """A value of a declared type from what a column holds (an int output is a float column)."""
    origin = getattr(t, "__origin__", None)
    if origin is list:
        return [None if _missing(x) else _cast(x, t.__args__[0]) for x in v] if isinstance(v, (list, tuple)) else v
    if t is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if t is bool and isinstance(v, (int, float)):
        return bool(v)
    return _plain(v)


def _typed(where: str, value, t, missing_ok: bool = False):
    """`value` as the declared type `t`, or an error naming the method."""
    value = _plain(value)
    if value is None and missing_ok:
        return None
    origin = getattr(t, "__origin__", None)
    if origin is list:
        if not isinstance(value, list):
            raise ExtensionError(f"{where} returned {type(value).__name__}, not a list")
        return [_typed(where, v, t.__args__[0]) for v in value]
    ok = (isinstance(value, int) and not isinstance(value, bool)) if t is int else \
        (isinstance(value, (int, float)) and not isinstance(value, bool)) if t is float else isinstance(value, t)
    if not ok:
        raise ExtensionError(f"{where} returned {type(value).__name__} {value!r}, not {t.__name__}")
    return float(value) if t is float else value


def _column(values: list, t) -> np.ndarray:
    """One value per agent as the shards hold them: floats with NaN for numbers and bools, else objects."""
    if t in (int, float, bool):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _plain(value):
    """numpy scalars and arrays, tuples -> Python values and lists (what JSON and a resume give
    back); a dict key that is not text raises TypeError (JSON would turn 1 into "1")."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"key {k!r} is not text (JSON would turn it into {str(k)!r})")
        return {k: _plain(v) for k, v in value.items()}
    return value


def _checked(spec, method: str, state) -> dict:
    """The state as plain JSON values (checkpointed in driver.json); an error naming the method if it cannot be."""
    if not isinstance(state, dict):
        raise ExtensionError(f"{spec.target}.{method} must leave the state a dict, not {type(state).__name__}")
    try:
        plain = _plain(state)  # one walk turns numpy values plain and checks the keys
        json.dumps(plain, allow_nan=False)
    except (TypeError, ValueError) as e:
        # the state is checkpointed as JSON: say so now, not when the checkpoint fails
        raise ExtensionError(f"{spec.target}.{method} left a state that is not JSON ({e}); keep numbers, "
                             "strings, lists and dicts with text keys in it") from None
    state.clear()  # the same dict (the driver's), now holding plain values
    state.update(plain)
    return state

