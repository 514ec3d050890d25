"""State fields' starting values on one shard.

In: a shard's agent kinds (each a slice of its agents), the plan's state fields (the population's,
and each agent kind's own: kinds of a mixture may start differently) and, for a start written as an
expression of the persona (`state w: float = persona.income * 0.1`), the shard's columns. Out: a
numpy column per state field; ranged fields are checked (ranges.py) like any update.
"""
from __future__ import annotations

import numpy as np

from populace.runtime.columns.vector import Context, Frame, evaluate, is_vector

from .ranges import checked_state


def filled(ty: dict, value, n: int) -> np.ndarray:
    """A column of `n` copies of `value`, of the numpy dtype the type keeps."""
    kind = ty["kind"]
    if kind == "int":
        return np.full(n, value, dtype=np.int64)
    if kind == "float":
        return np.full(n, value, dtype=np.float64)
    if kind == "bool":
        return np.full(n, bool(value), dtype=bool)
    arr = np.empty(n, dtype=object)
    arr[:] = [value] * n if isinstance(value, (list, dict)) else value
    return arr


def constant_column(shard, name: str, st) -> np.ndarray:
    """A state field's constant starts: each agent kind's own default (a mixture's kinds may differ)."""
    column = filled(st.type, st.default, len(shard.ids))
    for agent_name, local in shard.kinds:
        own = shard.plan.agents[agent_name].state.get(name)
        if own is not None and own.default != st.default:
            column[local] = filled(st.type, own.default, local.stop - local.start)
    return column


def computed_starts(shard, name: str, st) -> None:
    """The starts that are expressions of the persona, per agent kind (another kind may start from
    a constant); run once every persona column exists."""
    ctx = Context(seed=shard.seed, where="state:" + name)
    for agent_name, local in shard.kinds:
        own = shard.plan.agents[agent_name].state.get(name) or st
        if own.default_expr is None:
            continue
        frame = Frame(columns={k: v[local] for k, v in shard.columns.items()}, ids=shard.ids[local],
                      types=shard.types, world=shard, kinds=shard.kind_column[local])
        value = evaluate(own.default_expr, frame, ctx)
        n = local.stop - local.start
        shard.columns[name][local] = checked_state(name, st, value if is_vector(value) else np.full(n, value),
                                                   shard.ids[local], "its start value")
