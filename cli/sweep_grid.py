"""A sweep's grid and runs: the `--grid` / `--set a=1,2` items parsed, every combination times every
replicate as a SweepRun (its params, seed and run directory), and the result record of one run.

In: command-line items and the scenario's seed. Out: frozen SweepRun values and RunResult records
that cli/sweep.py executes and tabulates.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field

SEED_BITS = 31  # seeds stay positive and fit every integer column


class SweepError(Exception):
    """A sweep that cannot start (a malformed grid); the CLI shows it as a usage error."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (SweepError, (self.message,))


@dataclass(frozen=True, slots=True)
class SweepRun:
    index: int
    params: dict  # grid param -> value as written on the command line
    replicate: int
    seed: int
    run_dir: str


@dataclass(slots=True)
class RunResult:
    run: SweepRun
    status: str  # finished | failed | stopped (Ctrl-C) | skipped (not run: the sweep stopped first)
    error: str | None = None
    seconds: float = 0.0
    records: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # the grid params as the compiler typed them


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["variant=plain,famous", "rounds=3"]` -> {"variant": ["plain", "famous"], "rounds": ["3"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if name.startswith("param."):
            name = name[len("param."):]
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SweepError(f"--grid {item!r}: write NAME=V1,V2,...")
        if name in grid:
            raise SweepError(f"--grid {name}: given twice; list all its values in one --grid")
        parts = [v.strip() for v in values.split(",")]
        if not parts or any(not v for v in parts):
            raise SweepError(f"--grid {item!r}: an empty value")
        if len(set(parts)) != len(parts):
            raise SweepError(f"--grid {item!r}: a value is listed twice")
        grid[name] = parts
    return grid


def split_sets(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`--set` items of a sweep: (fixed overrides, grid items). `a=1,2` sweeps a over 1 and 2;
    commas inside brackets or quotes (`xs=[1, 2]`, `name="a, b"`) are one value."""
    fixed, swept = [], []
    for item in overrides:
        _, _, value = item.partition("=")
        (swept if len(_top_level_parts(value)) > 1 else fixed).append(item)
    return fixed, swept


def _top_level_parts(text: str) -> list[str]:
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return parts


def replicate_seed(base_seed: int, replicate: int) -> int:
    """Replicate 0 keeps the scenario's seed (it reproduces `populace run`); the others hash it."""
    if replicate == 0:
        return base_seed
    digest = hashlib.sha256(f"populace-sweep:{base_seed}:{replicate}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def plan_runs(grid: dict[str, list[str]], replicates: int, base_seed: int, sweep_dir: str) -> list[SweepRun]:
    """Every combination of the grid (in the order given, last param fastest) times every replicate."""
    names = list(grid)
    runs = []
    for combo in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, combo))
        for replicate in range(replicates):
            index = len(runs)
            label = "-".join(f"{k}={_safe(v)}" for k, v in params.items()) or "run"
            run_dir = os.path.join(sweep_dir, f"{index:04d}-{label}-r{replicate}")
            runs.append(SweepRun(index, params, replicate, replicate_seed(base_seed, replicate), run_dir))
    return runs


def _safe(value: str) -> str:
    # Run directory names stay portable whatever a value holds.
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", value)[:40]
