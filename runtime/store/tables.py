"""Agent columns <-> Arrow: how answers, personas, snapshots and checkpoints are typed on disk.

In: a shard's numpy column and its plan type (`{"kind": "int"}`). Out: a pyarrow Array of the
declared type, so pandas, polars and DuckDB read the declared types without glue: ints and bools
with nulls where an answer is missing, enums as dictionary (categorical) columns whose categories
are the declared values in order, records as struct columns, lists as list columns; `any` (a
value of no declared type) as JSON text. And back, for checkpoints.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa


def arrow_type(ty: dict) -> pa.DataType:
    kind = ty.get("kind")
    if kind == "int":
        return pa.int64()
    if kind == "float":
        return pa.float64()
    if kind == "bool":
        return pa.bool_()
    if kind == "str":
        return pa.string()
    if kind == "enum":
        values = ty.get("values", [])
        item = pa.string() if all(isinstance(v, str) for v in values) else pa.float64()
        return pa.dictionary(pa.int32(), item)
    if kind == "list":
        return pa.list_(arrow_type(ty.get("item", {"kind": "any"})))
    if kind == "record":
        return pa.struct([(name, arrow_type(t)) for name, t in ty.get("fields", {}).items()])
    return pa.string()  # any: JSON text


def plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _python(value, ty: dict):
    """One value as Python for pyarrow, fitted to its type; None where it does not fit (it was checked
    when the answer was parsed, so this only catches a missing value)."""
    value = plain(value)
    if value is None:
        return None
    kind = ty.get("kind")
    try:
        if kind == "int":
            return int(value) if not isinstance(value, bool) else int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return bool(value)
        if kind in ("str", "enum"):
            return value if kind == "enum" and not isinstance(value, str) else str(value)
        if kind == "list":
            item = ty.get("item", {"kind": "any"})
            return [_python(v, item) for v in value] if isinstance(value, (list, tuple)) else None
        if kind == "record":
            if not isinstance(value, dict):
                return None
            return {name: _python(value.get(name), t) for name, t in ty.get("fields", {}).items()}
    except (TypeError, ValueError):
        return None
    return json.dumps(value, sort_keys=True, default=str)  # any


def arrow_values(values: np.ndarray, ty: dict) -> pa.Array:
    """A column of typed values for Parquet (see the module docstring)."""
    kind = ty.get("kind")
    arr = np.asarray(values)
    if kind in ("int", "bool") and arr.dtype.kind == "f":
        missing = np.isnan(arr)
        filled = np.where(missing, 0, arr)
        return pa.array(filled.astype(np.int64 if kind == "int" else bool), mask=missing)
    if kind == "float":
        return pa.array(arr.astype(np.float64), mask=np.isnan(arr.astype(np.float64)))
    if arr.dtype.kind in "iub" and kind in ("int", "bool", None, "any"):
        return pa.array(arr)
    if kind == "enum":
        declared = list(ty.get("values", []))
        strings = all(isinstance(v, str) for v in declared)
        index = {v: i for i, v in enumerate(declared)}
        codes = [index.get(v if strings else plain(v)) if v is not None else None for v in arr.tolist()]
        dictionary = pa.array(declared, pa.string() if strings else pa.float64())
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary)
    if kind in ("list", "record"):
        return pa.array([_python(v, ty) for v in arr.tolist()], arrow_type(ty))
    if kind == "any":
        return pa.array([None if v is None else json.dumps(plain(v), sort_keys=True, default=str) for v in arr.tolist()],
                        pa.string())
    return pa.array([None if v is None else str(v) for v in arr.tolist()], pa.string())


def from_arrow(column, ty: dict, state: bool) -> np.ndarray:
    """The inverse of arrow_values: back to the shard's in-memory column for this type.
    State fields never miss a value and keep their own dtype; ask outputs use NaN / None for missing.
    (Checkpoints written before records were struct columns hold JSON text: read as well.)"""
    kind = ty.get("kind")
    values = column.to_pylist()
    if kind in ("int", "float", "bool"):
        if state:
            return np.array(values, dtype={"int": np.int64, "float": np.float64, "bool": bool}[kind])
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    arr = np.empty(len(values), dtype=object)
    if kind in ("list", "record", "any"):
        arr[:] = [json.loads(v) if isinstance(v, str) else v for v in values]
    else:
        arr[:] = values
    return arr
