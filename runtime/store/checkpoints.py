"""Checkpoint files: each shard's state as one Arrow file, then driver.json, which completes them.

In: a checkpoint directory (checkpoints/NNNNNN/) and what changes during a run: per shard its
state and ask-output columns (Arrow arrays) and its agents' memory ring; for the driver its place
in the workflow, environment values and the run state fold's counts. Out: the files, written
atomically (driver.json last, so a checkpoint without it is not one), and read back: the usable
checkpoints of a run, newest first (a damaged one is skipped; one written by a newer Populace is
refused, naming both versions). Personas are never saved: they are sampled again from the seed.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from . import latency
from .rundir import RUN_FORMAT, RunDir, check_format, populace_version, replacing


class CheckpointError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (CheckpointError, (self.message,))


# ---------------------------------------------------------------- shards
def shard_file(directory: str, population: str, index: int) -> str:
    return os.path.join(directory, f"{population}-{index}.arrow")


def save_shard(path: str, ids: np.ndarray, values: dict, memory_text: list, memory_chars: np.ndarray,
               memory_count: np.ndarray) -> str:
    """One shard's changing state as one Arrow file: `values` name -> Arrow array, then the memory ring."""
    cols = {"agent": pa.array(ids, pa.int64())}
    for name, array in values.items():
        cols["v:" + name] = array
    for j, texts in enumerate(memory_text):
        cols[f"m:{j}"] = pa.array(texts.tolist(), pa.string())
        cols[f"c:{j}"] = pa.array(memory_chars[j], pa.int32())
    cols["count"] = pa.array(memory_count, pa.int64())
    table = pa.table(cols).replace_schema_metadata({"populace_format": str(RUN_FORMAT),
                                                      "populace_version": populace_version()})
    # a full disk: no partial file left behind, and the error names the file
    with replacing(path, ".arrow") as tmp, pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def load_shard(path: str, start: int, size: int) -> dict:
    """{"values": name -> Arrow column, "memory": slot -> texts, "chars": slot -> ints, "count": ints}."""
    try:
        with pa.memory_map(path) as source:
            table = pa.ipc.open_file(source).read_all()
        table.validate(full=True)  # flipped bytes in offsets or text: an error here, not a crash later
    except (OSError, pa.ArrowInvalid) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    meta = table.schema.metadata or {}
    stamp = meta.get(b"populace_format", b"1")
    check_format(int(stamp) if stamp.isdigit() else 1, path,
                 meta.get(b"populace_version", b"").decode("utf-8", "replace") or None)
    if table.num_rows != size or (size and table.column("agent")[0].as_py() != start):
        raise CheckpointError(f"checkpoint {path} holds other agents than this shard")
    out = {"values": {}, "memory": {}, "chars": {}, "count": table.column("count").to_numpy().copy()}
    for field in table.schema.names:
        if field.startswith("v:"):
            out["values"][field[2:]] = table.column(field)
        elif field.startswith("m:"):
            out["memory"][int(field[2:])] = table.column(field).to_pylist()
        elif field.startswith("c:"):
            out["chars"][int(field[2:])] = table.column(field).to_numpy()
    return out


def latest_checkpoint(root: str) -> str | None:
    """The newest complete checkpoint directory (its driver.json written last), or None."""
    if not os.path.isdir(root):
        return None
    done = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "driver.json")))
    return os.path.join(root, done[-1]) if done else None


# ---------------------------------------------------------------- the driver
def write_driver_state(run_dir: RunDir, seq: int, state: dict) -> None:
    run_dir.write_json(f"checkpoints/{seq:06d}/driver.json",
                       {"format": RUN_FORMAT, "populace_version": populace_version(), "seq": seq, **state})


def fold_of(state: dict) -> dict:
    """The run state fold's counts in a driver.json; one written before the fold was saved keeps
    `totals`, `by_model` and `latencies`, which say the same."""
    if isinstance(state.get("fold"), dict):
        return state["fold"]
    totals = state.get("totals", {})
    return {"steps_done": totals.get("steps", 0), "agents_done": totals.get("agents", 0),
            "calls": totals.get("calls", 0), "tokens_in": totals.get("tokens_in", 0),
            "tokens_out": totals.get("tokens_out", 0), "errors": totals.get("errors", 0),
            "by_model": state.get("by_model", {}), "checkpoint_seq": state.get("seq", 0),
            "latencies": {name: latency.from_any(saved) for name, saved in state.get("latencies", {}).items()}}


def checkpoints(run_dir: str, plan) -> list[tuple[str, dict]]:
    """Complete checkpoints, newest first: (directory, driver state). A damaged one is skipped; one
    written by a newer Populace raises NewerFormatError (it is not damaged: we cannot read it)."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root), reverse=True):
        directory = os.path.join(root, name)
        path = os.path.join(directory, "driver.json")
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue  # torn or missing: not a checkpoint
        if isinstance(state, dict):
            check_format(state.get("format"), path, state.get("populace_version"))
        if not usable(state, plan):
            continue
        files = [f"{pop}-{i}.arrow" for pop, ranges in state["ranges"].items() for i in range(len(ranges))]
        if all(os.path.exists(os.path.join(directory, f)) for f in files):
            out.append((os.path.abspath(directory), state))
    return out


def checkpoints_written(run_dir: str) -> bool:
    """Has this run written a complete checkpoint (is there anything to resume from)?"""
    root = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(root) and any(os.path.exists(os.path.join(root, d, "driver.json")) for d in os.listdir(root))


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def usable(state, plan) -> bool:
    """driver.json of this plan with every field the driver reads, of the right type (a hand edit or
    flipped bytes that still parse as JSON make it damaged, not a crash)."""
    if not isinstance(state, dict) or state.get("plan_hash") != plan.plan_hash:
        return False
    types = {"seq": int, "frames": list, "env": dict, "metrics_lines": int, "ranges": dict, "shard_steps": int}
    if not all(isinstance(state.get(k), t) and not isinstance(state.get(k), bool) for k, t in types.items()):
        return False
    if not all(isinstance(f, dict) and _whole(f.get("index")) and isinstance(f.get("variables"), dict)
               and isinstance(f.get("label"), str) for f in state["frames"]) or not state["frames"]:
        return False
    if set(state["env"]) != set(plan.environments) or not all(isinstance(v, dict) for v in state["env"].values()):
        return False
    if set(state["ranges"]) != set(plan.populations):
        return False
    for pop, ranges in state["ranges"].items():
        if not isinstance(ranges, list) or not ranges:
            return False
        bounds = [0]
        for r in ranges:
            if not (isinstance(r, list) and len(r) == 2 and _whole(r[0]) and _whole(r[1]) and r[0] == bounds[-1] < r[1]):
                return False
            bounds.append(r[1])
        if bounds[-1] != plan.populations[pop].size:
            return False
    if state["metrics_lines"] < 0:
        return False
    elapsed = state.get("elapsed", 0.0)
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool):
        return False
    return _usable_fold(state, plan)


def _usable_fold(state: dict, plan) -> bool:
    """The counts a resumed run starts from: whole numbers where the fold keeps whole numbers, models
    that the plan declares, latency histograms (or the lists of seconds of older runs)."""
    if "fold" not in state:  # an older driver.json
        keys = ("calls", "tokens_in", "tokens_out", "errors", "agents", "steps")
        totals, by_model, latencies = state.get("totals"), state.get("by_model"), state.get("latencies", {})
        if not isinstance(totals, dict) or not all(_whole(totals.get(k)) for k in keys):
            return False
        if not isinstance(by_model, dict) or not all(
                name in plan.models and isinstance(m, dict) and all(_whole(m.get(k)) for k in keys[:3])
                for name, m in by_model.items()):
            return False
        return isinstance(latencies, dict) and all(_latencies(v) for v in latencies.values())
    fold = state["fold"]
    if not isinstance(fold, dict):
        return False
    counts = ("steps_done", "agents_done", "calls", "tokens_in", "tokens_out", "errors", "answers")
    if not all(_whole(fold.get(k, 0)) for k in counts):
        return False
    by_model = fold.get("by_model", {})
    if not isinstance(by_model, dict) or not all(
            name in plan.models and isinstance(m, dict) and all(_whole(m.get(k, 0)) for k in counts[2:5])
            for name, m in by_model.items()):
        return False
    latencies = fold.get("latencies", {})
    if not isinstance(latencies, dict) or not all(_latencies(v) for v in latencies.values()):
        return False
    return all(isinstance(fold.get(k, []), list) for k in ("error_samples", "records", "restarts"))


def _latencies(saved) -> bool:
    """A model's latencies: a histogram (bucket number as text -> calls), or a list of seconds (older)."""
    if isinstance(saved, list):
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in saved)
    return isinstance(saved, dict) and all(
        isinstance(k, str) and k.lstrip("-").isdigit() and _whole(n) for k, n in saved.items())
