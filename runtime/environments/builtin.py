"""Environments and interactions at run time: groups, networks, chat rooms and grids.

In: plan expressions that reach past one agent (`via: {"group": g}` / `via: {"neighbors": net}`
aggregates, environment methods) and the plan's environments. Out, in the driver: what a step's
shards need (per-group values combined from shard partials; a population's column gathered for
neighbour aggregates), chat room logs and grid moves; in a shard: each agent's value.
Who does what:
- groups are map-reduce: shards return per-group partials, the driver combines them and sends
  one value per group back; a shard picks its agents' own groups' values.
- neighbours can live on other shards: the driver gathers the aggregated column (one value per
  agent of the population) and sends it with the step; each shard holds only its own agents'
  adjacency rows (network.py) and reduces over them.
- chat room posts and grid positions live in the driver's environment values, so every shard
  sees the same log and the same map within a step.
"""
from __future__ import annotations

import os

import numpy as np

from populace.compiler.plan import steps as s
from populace.compiler.plan.codec import to_json
from populace.compiler.plan.evaluate import EvalError

from . import groups
from . import network
from populace.runtime.columns.vector import agg_key, is_vector

MOVES = {"north": (0, -1), "n": (0, -1), "south": (0, 1), "s": (0, 1), "east": (1, 0), "e": (1, 0),
         "west": (-1, 0), "w": (-1, 0), "stay": (0, 0), "none": (0, 0)}


# ------------------------------------------------------------------ plan walking
def walk(expr):
    if isinstance(expr, dict):
        yield expr
        for v in expr.values():
            yield from walk(v)
    elif isinstance(expr, list):
        for v in expr:
            yield from walk(v)


def strip_via(expr):
    """An aggregate's argument as each member computes it for itself (the `via` removed)."""
    if isinstance(expr, dict):
        return {k: strip_via(v) for k, v in expr.items() if not (k == "via" and "col" in expr)}
    if isinstance(expr, list):
        return [strip_via(v) for v in expr]
    return expr


def via_specs(expr) -> list[dict]:
    """Every group or neighbour aggregate inside `expr`, innermost first, without repeats."""
    found = {}
    for node in walk(expr):
        if "agg" in node and "via" in node:
            found[agg_key(node)] = node
    return [found[k] for k in sorted(found)]


def check_plan(plan) -> list[str]:
    """What this runtime refuses before a run starts (misuse the compiler lets through)."""
    problems = []
    for step in plan.steps():
        pop = getattr(step, "population", None) if isinstance(step, (s.Ask, s.SetState)) else getattr(step, "sender", None)
        systems = [plan.agents[part.agent].system for part in plan.populations[pop].mixture] \
            if isinstance(step, s.Ask) else []
        for node in walk([to_json(step), systems]):
            via = node.get("via") if isinstance(node, dict) and "agg" in node else None
            if not via:
                continue
            owner = plan.groups[via["group"]].population if "group" in via else plan.environments[via["neighbors"]].population
            if pop and pop != owner:
                problems.append(f"{step.id}: `{pop}` agents have no {'group in ' + via['group'] if 'group' in via else 'neighbours in ' + via['neighbors']}, "
                                f"which is over `{owner}`")
        if isinstance(step, s.Tell) and step.target.kind in ("group", "neighbors"):
            if step.sender != step.target.population:
                problems.append(f"{step.id}: the senders (`{step.sender}`) must be the agents of "
                                f"`{step.target.group or step.target.env}` (`{step.target.population}`)")
        if isinstance(step, s.Call):
            kind = plan.environments[step.env].kind
            if kind != "python" and (kind, step.method) not in (("chatroom", "post"), ("grid", "move"),
                                                                 ("grid", "move_to_empty")):
                problems.append(f"{step.id}: `{step.env}.{step.method}` is not a statement")
    for env in plan.environments.values():
        if env.kind == "network" and env.params.get("edges"):
            path = initial_values(plan, env)["_edges"]
            if not os.path.isfile(path):
                problems.append(f"environment `{env.name}`: its edge list {env.params['edges']} is not at {path} "
                                f"(it is read relative to the scenario file, {env.span.file})")
        if env.kind == "network" and env.params.get("generator", {}).get("name") == "complete" \
                and plan.populations[env.population].size > network.MAX_COMPLETE:
            problems.append(f"environment `{env.name}`: complete() over more than {network.MAX_COMPLETE:,} agents")
    return problems


def initial_values(plan, env) -> dict:
    """Values the driver keeps for a built-in kind besides its declared fields."""
    if env.kind == "chatroom":
        return {"posts": []}
    if env.kind == "network" and env.params.get("edges"):
        span_file = env.span.file
        path = os.path.join(os.path.dirname(span_file), env.params["edges"])
        return {"_edges": os.path.abspath(path)}
    if env.kind == "grid":
        return {"_positions": grid_positions(plan, env)}
    return {}


# ------------------------------------------------------------------ grids
def grid_positions(plan, env) -> list:
    """Start cells: agent i at a cell drawn from the seed; several agents may share a cell, unless
    `occupancy = "one"`: then the agents take the first cells of a seeded shuffle of all cells."""
    from populace.runtime.columns import rng

    n = plan.populations[env.population].size
    ids = np.arange(n, dtype=np.int64)
    if env.params.get("occupancy") == "one":
        cells = np.arange(env.params["width"] * env.params["height"], dtype=np.int64)
        shuffled = cells[np.argsort(rng.uniforms(cells, rng.key(plan.seed, "grid", env.name, "cells")), kind="stable")]
        return shuffled[:n].tolist()
    x = (rng.uniforms(ids, rng.key(plan.seed, "grid", env.name, "x")) * env.params["width"]).astype(np.int64)
    y = (rng.uniforms(ids, rng.key(plan.seed, "grid", env.name, "y")) * env.params["height"]).astype(np.int64)
    return (y * env.params["width"] + x).tolist()


def move(env, cells: np.ndarray, moves: list) -> np.ndarray:
    """Apply one move per agent ("north", "south", "east", "west", "stay"; missing: stay)."""
    width, height, torus = env.params["width"], env.params["height"], env.params.get("torus", True)
    dx = np.array([MOVES.get(str(m).lower(), (0, 0))[0] if m is not None else 0 for m in moves], dtype=np.int64)
    dy = np.array([MOVES.get(str(m).lower(), (0, 0))[1] if m is not None else 0 for m in moves], dtype=np.int64)
    x, y = cells % width + dx, cells // width + dy
    if torus:
        x, y = x % width, y % height
    else:
        x, y = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    return y * width + x


def move_to_empty(env, cells: np.ndarray, movers: np.ndarray, key) -> np.ndarray:
    """The agents where `movers` is true each go to a free cell (one no agent stood on before the
    move), drawn from `key`: distinct cells for distinct movers. With fewer free cells than movers,
    a random choice of movers moves and the others stay. Cells the movers leave are free only from
    the next move on (all move at once, unlike one-after-another schemes)."""
    from populace.runtime.columns import rng

    total = env.params["width"] * env.params["height"]
    who = np.flatnonzero(movers)
    free = np.flatnonzero(np.bincount(cells, minlength=total) == 0).astype(np.int64)
    if not len(who) or not len(free):
        return cells
    free = free[np.argsort(rng.uniforms(free, key), kind="stable")]
    if len(free) < len(who):
        who = np.sort(who[np.argsort(rng.uniforms(who.astype(np.int64), rng.key(key, "movers")), kind="stable")][:len(free)])
    out = cells.copy()
    out[who] = free[:len(who)]
    return out


def grid_adjacency(env, cells: np.ndarray, start: int, stop: int):
    """CSR rows of agents [start, stop): the agents in their Moore / von Neumann neighbourhood."""
    width, height, torus = env.params["width"], env.params["height"], env.params.get("torus", True)
    radius = int(env.params.get("radius", 1))
    moore = env.params.get("neighborhood", "moore") != "von_neumann"
    order = np.argsort(cells, kind="stable")
    sorted_cells = cells[order]
    # Where each cell's agents start in `order`: one array lookup per query instead of a binary
    # search (searchsorted over a million cells was 0.9 s of a shard's 1.4 s), while the grid has
    # no more cells than a few per agent; a sparse, larger grid keeps the binary search.
    cells_total = width * height
    first = None
    if cells_total <= 4 * len(cells) + 1024:
        first = np.zeros(cells_total + 1, dtype=np.int64)
        np.cumsum(np.bincount(cells, minlength=cells_total), out=first[1:])
    offs = [(dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)
            if (moore or abs(dx) + abs(dy) <= radius)]
    mine = cells[start:stop]
    x0, y0 = mine % width, mine // width
    parts_row, parts_nb = [], []
    for dx, dy in offs:
        x, y = x0 + dx, y0 + dy
        if torus:
            x, y = x % width, y % height
            ok = np.ones(len(mine), dtype=bool)
        else:
            ok = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        target = np.where(ok, y * width + x, 0)
        if first is not None:
            lo, hi = first[target], first[target + 1]
        else:
            lo = np.searchsorted(sorted_cells, target, "left")
            hi = np.searchsorted(sorted_cells, target, "right")
        count = np.where(ok, hi - lo, 0)
        rows = np.repeat(np.arange(len(mine)), count)
        # The agents of every range [lo, hi) one after another, without a Python loop over agents:
        # each range's start, repeated, plus the position inside its range.
        idx = np.repeat(lo, count) + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        parts_row.append(rows)
        parts_nb.append(order[idx])
    rows = np.concatenate(parts_row)
    nbs = np.concatenate(parts_nb).astype(np.int64)
    agent = rows + start
    keep = nbs != agent
    return network.csr(rows[keep], nbs[keep], stop - start, len(cells))


# ------------------------------------------------------------------ in a shard
def via_aggregate(expr: dict, frame, ctx):
    """Each agent's value of a group or neighbour aggregate (the driver sent what is needed)."""
    via = expr["via"]
    sent = ctx.aggregates[agg_key(expr)]
    if "group" in via:
        return groups.lookup(sent, frame.world.group_keys(via["group"]))
    offsets, neighbours = frame.world.adjacency(via["neighbors"], ctx)
    if isinstance(sent, dict):  # the argument compares each neighbour with the agent itself
        return network.reduce_edges(expr["agg"], edge_values(expr, sent, frame, ctx, offsets, neighbours),
                                    offsets, expr["params"])
    return network.aggregate(expr["agg"], np.asarray(sent), offsets, neighbours, expr["params"])


def self_refs(expr) -> bool:
    """Does a neighbour aggregate's argument or filter read the agent's own fields (`self.x`)?"""
    return any("col" in node and node.get("self") for node in walk([expr.get("arg"), expr.get("where")]))


def kinds_of(pop, ids: np.ndarray) -> np.ndarray:
    """The agent kind of each id: a mixture's kinds hold contiguous id ranges."""
    starts = np.array([part.start for part in pop.mixture], dtype=np.int64)
    names = np.array([part.agent for part in pop.mixture], dtype=object)
    return names[np.searchsorted(starts, ids, side="right") - 1]


def neighbour_columns(expr) -> dict:
    """The neighbours' fields a self-comparing neighbour aggregate reads: name -> column expression."""
    return {node["col"]: {k: v for k, v in node.items() if k != "via"}
            for node in walk([expr.get("arg"), expr.get("where")])
            if "col" in node and not node.get("self") and node.get("src") != "builtin"}


def _as_edges(expr):
    """An argument evaluated per edge: the agent's own fields are the `self:` columns."""
    if isinstance(expr, dict):
        if "col" in expr and expr.get("self"):
            return {"col": "self:" + expr["col"]}
        return {k: _as_edges(v) for k, v in expr.items() if not (k == "via" and "col" in expr)}
    if isinstance(expr, list):
        return [_as_edges(v) for v in expr]
    return expr


def edge_values(expr: dict, sent: dict, frame, ctx, offsets: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """One value per edge (agent, neighbour) of the argument, missing where the filter does not keep it:
    the neighbours' fields come from the gathered columns, the agent's own from its row."""
    from populace.runtime.columns.vector import Frame, builtin, evaluate, truth

    row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    columns = {name: np.asarray(values)[neighbours] for name, values in sent["columns"].items()}
    types = dict(frame.types)
    for node in walk([expr.get("arg"), expr.get("where")]):
        if "col" in node and node.get("self"):
            own = builtin(node["col"], frame) if node.get("src") == "builtin" else frame.columns[node["col"]]
            columns["self:" + node["col"]] = np.asarray(own)[row]
            types["self:" + node["col"]] = frame.types.get(node["col"])
    # ids are the neighbours' (their `id`); their kinds follow from the ids (mixture parts are id ranges)
    edges = Frame(columns=columns, ids=np.asarray(neighbours), types=types, world=frame.world,
                  kinds=kinds_of(frame.world.plan.populations[frame.world.population], np.asarray(neighbours)))
    values = evaluate(_as_edges(expr["arg"]), edges, ctx)
    values = np.asarray(values) if is_vector(values) else np.full(len(row), values)
    if "where" in expr:
        keep = truth(evaluate(_as_edges(expr["where"]), edges, ctx), len(row))
        if values.dtype == object:
            values = values.copy()
            values[~keep] = None
        else:
            values = np.where(keep, values.astype(np.float64), np.nan)
    return values


def method_value(expr: dict, frame, ctx, args: list):
    env, method = expr["env"], expr["method"]
    key = agg_key(expr)
    if key in ctx.aggregates:  # a Python kind's query, computed by the driver (runtime/extensions.py)
        value = ctx.aggregates[key]
        return value[frame.ids] if is_vector(value) else value
    if method == "recent":
        posts = ctx.env[env].get("posts", [])
        n = int(args[0])
        return list(posts[-n:]) if n > 0 else []
    if method == "degree":
        offsets, _ = frame.world.adjacency(env, ctx)
        return np.diff(offsets).astype(np.int64)
    if method in ("x", "y"):  # a grid cell's column (0 .. width-1) and row (0 .. height-1)
        width = frame.world.plan.environments[env].params["width"]
        cells = np.asarray(ctx.env[env]["_positions"], dtype=np.int64)[frame.ids]
        return cells % width if method == "x" else cells // width
    raise EvalError(f"`{env}.{method}(...)` is a statement, not a value")


def text_column(values, n: int) -> list:
    if is_vector(values) or isinstance(values, list):
        return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in list(values)]
    return [values] * n
