"""Typed plan values <-> plan JSON, by their dataclass fields: one rule for every part of the plan.

In: a frozen dataclass of compiler/plan (parts.py, steps.py) or the JSON value of one. Out: the
other. A field's JSON key is its name unless its metadata says `key` (`else` is a Python keyword);
a field marked `optional` is left out of the JSON when it holds its default (None, False, ...:
the schema makes it optional), so a plan that does not use a newer feature keeps its bytes.
Tuples become lists and back; plan expressions, plan types and persona distributions stay JSON
(they are data that two interpreters read, see evaluate.py). Steps are decoded by their `op`.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing


def optional(default=None, **metadata):
    """A field that the JSON leaves out when it holds `default`."""
    return dataclasses.field(default=default, metadata={"optional": True, **metadata})


def key(name: str, **kwargs):
    """A field whose JSON key differs from its name."""
    return dataclasses.field(metadata={"key": name}, **kwargs)


def to_json(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        op = getattr(type(value), "OP", None)
        if op is not None:
            out["op"] = op
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get("optional") and v == f.default:
                continue
            out[f.metadata.get("key", f.name)] = to_json(v)
        return out
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def from_json(cls, data):
    """Decode `data` as a value of type `cls` (a dataclass, tuple[...], dict[str, ...], X | None, or plain)."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(cls) if a is not type(None)]
        if data is None:
            return None
        return from_json(options[0], data) if len(options) == 1 else data
    if origin is tuple:
        item = typing.get_args(cls)[0]
        return tuple(from_json(item, v) for v in data)
    if origin is dict:
        item = typing.get_args(cls)[1]
        return {k: from_json(item, v) for k, v in data.items()}
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        decode = getattr(cls, "decode", None)
        if decode is not None:  # a base class that dispatches (Step, by its op)
            cls = decode(data)
        hints = _hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            k = f.metadata.get("key", f.name)
            if k in data:
                kwargs[f.name] = from_json(hints[f.name], data[k])
        return cls(**kwargs)
    return data
