"""Agent columns <-> Arrow: how answers, personas and checkpoints are typed on disk.

In: a shard's numpy column and its plan type (`{"kind": "int"}`). Out: a pyarrow Array (ints and
bools with nulls where an answer is missing), and back for checkpoints.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa


def from_arrow(column, ty: dict, state: bool) -> np.ndarray:
    """The inverse of arrow_values: back to the shard's in-memory column for this type.
    State fields never miss a value and keep their own dtype; ask outputs use NaN / None for missing."""
    kind = ty.get("kind")
    values = column.to_pylist()
    if kind in ("int", "float", "bool"):
        if state:
            return np.array(values, dtype={"int": np.int64, "float": np.float64, "bool": bool}[kind])
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    arr = np.empty(len(values), dtype=object)
    if kind in ("list", "record", "any"):
        arr[:] = [None if v is None else json.loads(v) for v in values]
    else:
        arr[:] = values
    return arr


def plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def arrow_values(values: np.ndarray, ty: dict) -> pa.Array:
    """A column of typed values for Parquet: ints and bools with nulls where the value is missing."""
    kind = ty.get("kind")
    arr = np.asarray(values)
    if kind in ("int", "bool") and arr.dtype.kind == "f":
        missing = np.isnan(arr)
        filled = np.where(missing, 0, arr)
        return pa.array(filled.astype(np.int64 if kind == "int" else bool), mask=missing)
    if kind == "float":
        return pa.array(arr.astype(np.float64), mask=np.isnan(arr.astype(np.float64)))
    if arr.dtype.kind in "iub":
        return pa.array(arr)
    if kind in ("list", "record", "any"):
            return pa.array([None if v is None else json.dumps(plain(v), sort_keys=True, default=str) for v in arr.tolist()],
                        pa.string())
    return pa.array([None if v is None else str(v) for v in arr.tolist()], pa.string())
