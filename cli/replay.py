"""`populace replay RUN`: rerun a finished run from its response cache and check it computes the same.

In: a run directory (plan.json, summary.json, metrics.jsonl, records/, the response cache that
manifest.json names or RUN/cache.sqlite). Out: a new run directory (default RUN-replay), a line per
compared file on stdout, and an exit code: 0 when metrics.jsonl and every records/ table are byte for
byte the original's, 1 when one differs or the replay could not answer a call from the cache.

The replay runs with the cache only (the `--replay` mode of `populace run`): a call whose reply is
not in the cache is a failed answer, never a request to a provider, so a replay spends nothing.
"""
from __future__ import annotations

import json
import os
import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="rerun a finished run from its response cache (no model calls) and "
                                      "check its metrics and records are byte-identical")
    p.add_argument("run_dir", help="the finished run to replay")
    p.add_argument("--run-dir", dest="out", help="write the replay here (default: RUN-replay)")
    p.add_argument("--cache", help="the response cache (default: the one the run used, from its manifest.json)")
    p.add_argument("--executor", choices=("ray", "local"), default=None,
                   help="where the shards run (default: where the run ran)")
    p.add_argument("--address", help="an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--quiet", action="store_true", help="print only the comparison")


def cmd_replay(args) -> int:
    from populace.compiler.plan import PlanError, read_plan
    from populace.runtime.engine.preflight import used_models
    from populace.runtime.engine.run import run_plan
    from populace.runtime.store import manifest as manifests

    from .progress import Progress

    run = args.run_dir.rstrip("/") or args.run_dir
    try:
        plan = read_plan(os.path.join(run, "plan.json"))
    except PlanError as e:
        return _error(f"{run} cannot be replayed: {e}")
    status = _status(run)
    if status != "finished":
        return _error(f"{run} ended {status or 'without a summary (is it still running?)'}; replay reruns a "
                      "finished run (`populace resume` continues an unfinished one first)")
    manifest = manifests.read(run) or {}
    if manifest.get("branched_from"):
        parent = manifest["branched_from"]
        return _error(f"{run} is a branch of {parent.get('run')}; its plan holds only the new params, so a replay "
                      "from the start would not be the branch. Replay the parent, or branch it again with the same "
                      f"--at {parent.get('at')} and --set (answered from the cache)")
    started = _run_started(run)
    cache = args.cache or manifest.get("cache") or os.path.join(run, "cache.sqlite")
    if any(not plan.models[m].offline for m in used_models(plan)) and not os.path.exists(cache):
        return _error(f"there is no response cache at {cache}; replay answers only from the cache the run "
                      "filled (name it with --cache)")
    executor = args.executor or manifest.get("executor") or started.get("executor") or "local"
    counts = set((manifest.get("shards") or started.get("shards") or {}).values())
    shards = counts.pop() if len(counts) == 1 else None  # the same layout, where one count says it
    out = args.out or _free(run + "-replay")
    summary = run_plan(plan, executor=executor, shards=shards, address=args.address, run_dir=out,
                       display=Progress(quiet=args.quiet), cache=os.path.abspath(cache), replay=True,
                       folder=started.get("scenario_dir"))
    return report(run, out, summary)


def report(run: str, out: str, summary: dict) -> int:
    """Compare the replay's outputs with the original's and say so, a line each."""
    from populace.runtime.store.manifest import outputs

    want, got = outputs(run), outputs(out)
    # an LLM model's `calls` are the requests it sent; cache hits are counted apart
    requests = sum(m.get("calls", 0) for m in (summary.get("models") or {}).values() if "cache_hits" in m)
    hits = sum(m.get("cache_hits", 0) for m in (summary.get("models") or {}).values())
    print(f"replay: {out} ({summary['status']}); {hits:,} LLM answers from the cache, {requests:,} requests "
          "to LLM providers")
    same = summary["status"] == "finished" and not summary.get("errors")
    if not same:
        print(f"  the replay did not finish cleanly ({summary.get('errors', 0):,} errors): a call was not in the "
              "cache, or the run's Python changed")
    files = [("metrics.jsonl", want["metrics_sha256"], got["metrics_sha256"])]
    files += [(f"records/{n}", h, got["records"].get(n)) for n, h in want["records"].items()]
    files += [(f"records/{n}", None, h) for n, h in got["records"].items() if n not in want["records"]]
    for name, a, b in files:
        ok = a == b
        same = same and ok
        print(f"  {name}: {'identical' if ok else 'DIFFERS'}" + ("" if ok else _first_difference(run, out, name)))
    print("replay matches the run byte for byte" if same else "replay does NOT match the run")
    return 0 if same else 1


def _first_difference(run: str, out: str, name: str) -> str:
    if not name.endswith(".jsonl"):
        return ""
    try:
        with open(os.path.join(run, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
            for i, (x, y) in enumerate(zip(a, b), 1):
                if x != y:
                    return f" (first at line {i})"
    except OSError:
        return " (missing)"
    return " (one is longer)"


def _status(run: str) -> str | None:
    try:
        with open(os.path.join(run, "summary.json"), encoding="utf-8") as f:
            return json.load(f).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _run_started(run: str) -> dict:
    """The first run_started event (executor, shards, scenario_dir), or {}."""
    from populace.runtime.store.events import read_events

    try:
        return next((e for e in read_events(os.path.join(run, "events.jsonl")) if e.get("type") == "run_started"), {})
    except (OSError, ValueError):
        return {}


def _free(path: str) -> str:
    return path if not os.path.exists(path) else f"{path}-{time.strftime('%Y%m%d-%H%M%S')}"


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
