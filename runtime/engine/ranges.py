"""Checked state ranges: a state field declared `in LOW..HIGH` keeps its values inside it.

In: a plan StateField (its type's low/high and `out_of_range`), the new values an update or a start
expression gives, the agents' ids and where the values come from. Out: the values (clipped when the
field says `clip`), or an EvalError naming the first agent out of range, its value and the line.
"""
from __future__ import annotations

import numpy as np

from populace.compiler.plan.evaluate import EvalError


def checked_state(name: str, field, values: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    """New values of a ranged state field (`state x: float in 0..1`): clipped when the field says
    `clip`, else a value outside the range fails the run, naming the agent, the value and the update."""
    low, high = field.type.get("min"), field.type.get("max")
    if low is None and high is None:
        return values  # no range (text, enums, unbounded numbers)
    arr = np.asarray(values, dtype=np.float64)
    bad = np.zeros(len(arr), dtype=bool)
    if low is not None:
        bad |= arr < low
    if high is not None:
        bad |= arr > high
    if not bad.any():
        return values
    if field.out_of_range == "clip":
        clipped = np.clip(arr, -np.inf if low is None else low, np.inf if high is None else high)
        return clipped.astype(np.int64) if field.type["kind"] == "int" else clipped
    i = int(np.flatnonzero(bad)[0])
    span = f"{low if low is not None else ''}..{high if high is not None else ''}"
    raise EvalError(f"agent {int(ids[i])}: `{name}` would be {arr[i]:g}, outside its range {span} ({where}); "
                    f"{int(bad.sum())} agent(s) out of range. Declare `state {name}: ... in {span} clip` to clip instead")
