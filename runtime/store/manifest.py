"""The reproducibility manifest: what a run was made of, in manifest.json of its run directory.

In: the typed plan, the run's options (executor, shards, cache, budget) and, when the run ends, its
summary and files. Out: manifest.json, written when the run starts and completed (its `result`) when
it ends or a resume ends:

    {"manifest": 1, "populace_version", "python", "packages": {name: version},
     "scenario": {"name", "sources": {file: sha256}}, "plan_hash", "plan_sha256", "seed", "params",
     "models": {name: {"provider", "settings", "limits", "price"}}, "executor", "shards",
     "cache": path, "budget_usd", "started_at",
     "result": {"status", "calls", "cache_hits": {model: n}, "metrics_sha256", "records": {file: sha256}}}

`populace replay RUN` reruns the plan from the cache and compares the metrics and records with the
hashes here. API keys are never in it: model settings name the variable a key is read from, not the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time

from populace.compiler.plan import plan_bytes

from .rundir import RunDir, populace_version

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# What decides a run's numbers besides Populace itself; a package that is not installed is left out.
PACKAGES = ("ray", "anthropic", "openai", "aiohttp", "pyarrow", "numpy", "lark", "jsonschema", "nicegui")


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_sha256(path: str) -> str | None:
    """The file's sha256, or None when it does not exist."""
    if not os.path.exists(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def start(directory: RunDir, plan, executor: str, shards: dict, cache: str, budget: float | None) -> None:
    """Write manifest.json for a new run (its `result` is null until the run ends)."""
    models = {name: {"provider": m.provider, "settings": m.settings, "limits": dataclasses.asdict(m.limits),
                     "price": m.price} for name, m in plan.models.items()}
    directory.write_json(MANIFEST, {
        "manifest": MANIFEST_FORMAT, "populace_version": populace_version(), "python": platform.python_version(),
        "packages": package_versions(),
        "scenario": {"name": plan.scenario.name, "sources": plan.scenario.sources},
        "plan_hash": plan.plan_hash, "plan_sha256": hashlib.sha256(plan_bytes(plan) + b"\n").hexdigest(),
        "seed": plan.seed, "params": plan.params, "models": models, "executor": executor, "shards": shards,
        "cache": cache, "budget_usd": budget, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "result": None,
    })


def outputs(path: str) -> dict:
    """The hashes of what a run computed: metrics.jsonl and each records/ table."""
    records = os.path.join(path, "records")
    names = sorted(os.listdir(records)) if os.path.isdir(records) else []
    return {"metrics_sha256": file_sha256(os.path.join(path, "metrics.jsonl")),
            "records": {n: file_sha256(os.path.join(records, n)) for n in names}}


def finish(directory: RunDir, summary: dict) -> None:
    """Complete manifest.json with the run's outcome (a run from before manifests gets none)."""
    manifest = read(directory.path)
    if manifest is None:
        return
    models = summary.get("models") or {}
    manifest["result"] = {"status": summary.get("status"), "calls": summary.get("calls"),
                          "cache_hits": {m: v.get("cache_hits", 0) for m, v in models.items()},
                          **outputs(directory.path)}
    directory.write_json(MANIFEST, manifest)


def read(path: str) -> dict | None:
    """A run directory's manifest, or None for a run written before manifests existed."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
