"""The execution plan: its version, canonical bytes, schema validation, and the typed model.

In: a plan dict (from the compiler) or plan JSON bytes (from a file). Out: canonical bytes with a
sha256 `plan_hash`, or a Plan (frozen dataclasses: parts.py, steps.py) for the runtime, or a
PlanError naming the JSON path of the first problem. The runtime imports this package (the one
contract between compiler and runtime), never the syntax tree.
Compatibility: see docs/plan-format.md. A plan of a newer major version is refused, naming both.
"""
from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources

import jsonschema
import referencing

from .codec import from_json, to_json
from .parts import (Agent, Environment, Extension, Group, Limits, Model, Persona, Plan, Population, Scenario,
                    default_in_flight)
from .steps import Span, Step

PLAN_VERSION = "1.4"  # the newest plan this Populace writes and reads
BASE_VERSION = "1.0"  # what a plan without newer features says, so older runtimes still run it
SUPPORTED_MAJOR = 1


class PlanError(Exception):
    """A plan that cannot be used: bad JSON, a version we do not read, or a schema violation."""

    def __init__(self, message: str, path: str = "$"):
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path

    def __reduce__(self):
        return (PlanError, (self.message, self.path))


def canonical_bytes(plan: dict) -> bytes:
    """Sorted keys, no spaces, UTF-8: the same plan always gives the same bytes (and hash)."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def plan_hash(plan: dict) -> str:
    body = {k: v for k, v in plan.items() if k != "plan_hash"}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


@functools.cache
def schema() -> dict:
    return json.loads(resources.files(__package__).joinpath("schemas/plan.v1.json").read_text(encoding="utf-8"))


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    registry = referencing.Registry().with_resource(schema()["$id"], referencing.Resource.from_contents(schema()))
    return jsonschema.Draft202012Validator(schema(), registry=registry,
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def schema_errors(plan) -> list[PlanError]:
    """Every schema violation, sorted by JSON path."""
    errors = []
    for err in _validator().iter_errors(plan):
        message, path = _deepest(err)
        errors.append(PlanError(message if len(message) < 300 else message[:297] + "...", path))
    return sorted(errors, key=lambda e: e.path)


def _deepest(err) -> tuple[str, str]:
    """(message, JSON path) of the deepest error under a oneOf/anyOf, so a step that fails deep inside says where.

    The branch meant (say the `ask` step) fails deepest; the others fail at the top (another `op`).
    """
    context = list(err.context or ())
    wrong_op = {sub.relative_schema_path[0] for sub in context if sub.validator == "const"
                and sub.relative_path and sub.relative_path[-1] == "op"}  # branches for another kind of step
    branches = {sub.relative_schema_path[0] for sub in context}
    if context and wrong_op == branches:
        return f"unknown op {err.instance.get('op')!r}", err.json_path + ".op"
    meant = [sub for sub in context if sub.relative_schema_path[0] not in wrong_op]
    one_branch = len({sub.relative_schema_path[0] for sub in meant}) == 1
    best = (err.message, err.json_path)
    best_depth = err.json_path.count(".") + err.json_path.count("[")
    for sub in meant or context:
        message, path = _deepest(sub)
        depth = path.count(".") + path.count("[")
        if depth > best_depth or (one_branch and best[1] == err.json_path and best[0] == err.message):
            best, best_depth = (message, path), depth
    return best


def validate_plan(plan) -> None:
    errors = schema_errors(plan)
    if errors:
        raise errors[0]


# What each minor version added (docs/plan-format.md): a plan says the oldest version that has
# everything it uses, so a runtime that predates a feature refuses the plan instead of ignoring it.
V1_1 = "Python environment kinds"
V1_2 = ("filtered and grouped aggregates, argmin/argmax, ordered and verbatim asks, named and grouped records, "
        "regroup, snapshot, builtin id/kind columns, numbered random draws, state defaults from personas, checked "
        "state ranges, grids with occupancy")
V1_3 = "a budget in dollars"
V1_4 = "models sent through a provider's batch API (batch = true)"


def needed_version(plan: dict) -> str:
    """The oldest plan version that has every feature `plan` uses."""
    models = plan.get("models")
    if isinstance(models, dict) and any(isinstance(m, dict) and isinstance(m.get("settings"), dict)
                                        and m["settings"].get("batch") for m in models.values()):
        return "1.4"  # an older runtime would send the asks one by one at twice the price the plan says
    scenario = plan.get("scenario")
    settings = scenario.get("settings") if isinstance(scenario, dict) else None
    if isinstance(settings, dict) and "budget" in settings:
        return "1.3"  # a runtime that does not know budgets must refuse the plan, not overspend
    if _uses_1_2(plan):
        return "1.2"
    envs = plan.get("environments")
    if isinstance(envs, dict) and any(isinstance(e, dict) and e.get("kind") == "python" for e in envs.values()):
        return "1.1"
    scenario = plan.get("scenario")
    settings = scenario.get("settings") if isinstance(scenario, dict) else None
    if isinstance(settings, dict) and "extensions" in settings:
        return "1.1"
    return BASE_VERSION


_STEP_KEYS_1_2 = {"ask": ("in_order", "verbatim"), "record": ("table", "by")}
_METHODS_1_2 = {"move_to_empty", "x", "y"}


def _uses_1_2(plan: dict) -> bool:
    if not isinstance(plan, dict):
        return False
    def expr_uses(node) -> bool:
        if isinstance(node, list):
            return any(expr_uses(v) for v in node)
        if not isinstance(node, dict):
            return False
        if "agg" in node and ("where" in node or node["agg"] in ("argmin", "argmax")):
            return True
        if node.get("src") == "builtin" or node.get("self") or ("call" in node and "site" in node):
            return True
        if isinstance(node.get("method"), str) and node["method"] in _METHODS_1_2:
            return True
        return any(expr_uses(v) for v in node.values())

    for step in _all_steps(plan.get("workflow", [])):
        op = step.get("op")
        if op in ("regroup", "snapshot") or (isinstance(op, str) and any(k in step for k in _STEP_KEYS_1_2.get(op, ()))):
            return True
        if op == "call" and isinstance(step.get("method"), str) and step["method"] in _METHODS_1_2:
            return True
        if expr_uses({k: v for k, v in step.items() if k not in ("body", "branches", "else")}):
            return True
    for kind in ("agents", "populations"):
        for decl in _values(plan.get(kind)):
            state = decl.get("state") if isinstance(decl, dict) else None
            if isinstance(state, dict) and any(isinstance(f, dict) and ("default_expr" in f or "out_of_range" in f)
                                               for f in state.values()):
                return True
            if isinstance(decl, dict) and expr_uses(decl.get("system")):
                return True
    for env in _values(plan.get("environments")):
        if isinstance(env, dict) and env.get("kind") == "grid" and isinstance(env.get("params"), dict) \
                and "occupancy" in env["params"]:
            return True
    return False


def _values(mapping) -> list:
    """The values of a JSON object, or none when a broken plan holds something else there."""
    return list(mapping.values()) if isinstance(mapping, dict) else []


def _all_steps(steps):
    for step in steps if isinstance(steps, list) else ():
        if isinstance(step, dict):
            yield step
            yield from _all_steps(step.get("body"))
            for branch in step.get("branches") or ():
                if isinstance(branch, dict):
                    yield from _all_steps(branch.get("body"))
            yield from _all_steps(step.get("else"))


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def check_version(plan) -> None:
    if not isinstance(plan, dict):
        raise PlanError("a plan is a JSON object", "$")
    version = plan.get("plan_version")
    if not isinstance(version, str) or not version.count(".") == 1 or not all(p.isdigit() for p in version.split(".")):
        raise PlanError(f"plan_version must look like \"1.0\", not {version!r}", "$.plan_version")
    major = int(version.split(".")[0])
    if major > SUPPORTED_MAJOR:
        raise PlanError(f"this plan has version {version}, newer than this Populace reads ({PLAN_VERSION}); "
                        "upgrade Populace or compile the scenario again", "$.plan_version")
    needed = needed_version(plan)
    if major == SUPPORTED_MAJOR and _version_tuple(needed) > _version_tuple(version):
        what = {"1.4": V1_4, "1.3": V1_3, "1.2": V1_2}.get(needed, V1_1)
        raise PlanError(f"this plan uses {what}, which need plan version {needed}, but says {version}", "$.plan_version")
    if major < SUPPORTED_MAJOR:
        raise PlanError(f"plan version {version} is older than {PLAN_VERSION} and has no upgrader; compile the scenario again",
                        "$.plan_version")


def check_references(raw: dict) -> None:
    """Names the plan uses are names it declares (the schema cannot say so): a hand-edited plan
    that drops a model still used by an agent is refused here, with the JSON path of the use."""
    declared = {kind: set(raw[kind]) for kind in ("models", "personas", "agents", "populations", "groups", "environments")}

    def need(kind: str, name, path: str) -> None:
        if name is not None and name not in declared[kind]:
            raise PlanError(f"{kind[:-1]} {name!r} is used but not declared", path)

    for name, agent in raw["agents"].items():
        need("models", agent.get("model"), f"$.agents.{name}.model")
        need("personas", agent.get("persona"), f"$.agents.{name}.persona")
    for name, pop in raw["populations"].items():
        need("personas", pop.get("persona"), f"$.populations.{name}.persona")
        for i, part in enumerate(pop["mixture"]):
            need("agents", part["agent"], f"$.populations.{name}.mixture[{i}].agent")
    for name, persona in raw["personas"].items():
        for i, f in enumerate(persona["fields"]):
            if f.get("kind") == "write":
                need("models", f.get("model"), f"$.personas.{name}.fields[{i}].model")
    for name, group in raw["groups"].items():
        need("populations", group.get("population"), f"$.groups.{name}.population")
    for name, env in raw["environments"].items():
        need("populations", env.get("population"), f"$.environments.{name}.population")

    def steps(items, path):
        for i, step in enumerate(items):
            here = f"{path}[{i}]"
            if step.get("op") in ("ask", "set_state", "call"):
                need("populations", step.get("population"), f"{here}.population")
            if step.get("op") == "ask":
                need("models", step.get("model"), f"{here}.model")
            if "env" in step and step.get("op") in ("set_env", "call"):
                need("environments", step.get("env"), f"{here}.env")
            steps(step.get("body", ()), f"{here}.body")
            for j, branch in enumerate(step.get("branches", ())):
                steps(branch.get("body", ()), f"{here}.branches[{j}].body")
            steps(step.get("else", ()) or (), f"{here}.else")

    steps(raw["workflow"], "$.workflow")


def plan_from_dict(raw: dict) -> Plan:
    """A plan's JSON -> version check -> schema validation -> hash and references -> the typed Plan."""
    check_version(raw)
    validate_plan(raw)
    if raw["plan_hash"] != plan_hash(raw):
        raise PlanError("plan_hash does not match the plan's contents (was the file edited by hand?)", "$.plan_hash")
    check_references(raw)
    return from_json(Plan, raw)


def plan_to_dict(plan: Plan) -> dict:
    """The typed plan as its JSON (the exact inverse of plan_from_dict on a valid plan)."""
    return to_json(plan)


def plan_bytes(plan: Plan) -> bytes:
    """The canonical bytes of a typed plan: what plan.json holds."""
    return canonical_bytes(to_json(plan))


def load_plan(data: bytes | str) -> Plan:
    """Plan JSON -> version check -> schema validation -> Plan."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise PlanError(f"not valid JSON{where}: {getattr(e, 'msg', str(e))} (truncated file?)", "$") from None
    return plan_from_dict(raw)


def read_plan(path: str) -> Plan:
    try:
        with open(path, "rb") as f:
            return load_plan(f.read())
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", "") from None
