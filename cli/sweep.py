"""Run a scenario over a grid of params and replicates; gather every run's records into one table.

In: a scenario file, a grid (`name=v1,v2,...` per param), a replicate count and run options. Out:
a sweep directory holding one ordinary run directory per (combination, replicate), `sweep.json`
(what was asked and how each run ended) and `sweep.csv` / `sweep.parquet`: one row per run and
per record, with the grid params, the replicate, its seed, the run's status, error and directory,
and the recorded metrics. A run that fails is a row with its status and error; the others go on.

Where runs execute: with the local executor, in a pool of worker processes (`parallel`, default
one per CPU), each run isolated in its own process; with Ray, in this process on one shared Ray,
one after another by default (a run's shards already spread over the cluster's CPUs), or
`parallel` drivers at once in threads.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict

from .sweep_grid import (SEED_BITS, RunResult, SweepError, SweepRun, parse_grid, plan_runs,  # noqa: F401
                         replicate_seed, split_sets)


def execute_run(file: str, run: SweepRun, overrides: list[str], executor: str, shards: int | None,
                address: str | None, should_stop=None, workers: int | None = None) -> RunResult:
    """Compile with the run's params and seed, run it, read back its records. Never raises.
    `workers`: the local executor's worker processes (0 in a pool of sweep processes: those
    already fill the cores)."""
    started = time.monotonic()
    try:
        from populace.compiler import compile_file
        from populace.compiler.plan import plan_from_dict, plan_hash
        from populace.dsl.diagnostics import DiagnosticError

        from populace.runtime.engine.preflight import unsupported
        from populace.runtime.engine.run import run_plan

        try:
            compiled = compile_file(file, list(overrides) + [f"{k}={v}" for k, v in run.params.items()])
        except DiagnosticError as e:
            message = "; ".join(f"error[{d.code}]: {d.message}" for d in e.diagnostics if d.severity == "error")
            return RunResult(run, "failed", message or str(e), time.monotonic() - started)
        raw = json.loads(json.dumps(compiled.plan))
        declared = raw["scenario"].get("params", {})
        # every param the command line set (fixed with --set, or swept) is a column of the table
        named = [o.split("=", 1)[0].strip().removeprefix("param.") for o in overrides if "=" in o]
        typed = {k: declared.get(k, v) for k, v in run.params.items()}  # the grid's params first
        typed.update({k: declared[k] for k in named if k in declared and k not in typed})
        raw["scenario"]["seed"] = run.seed
        raw["plan_hash"] = plan_hash(raw)
        plan = plan_from_dict(raw)
        folder = os.path.dirname(os.path.abspath(file))
        problems = unsupported(plan, folder=folder)
        if problems:
            return RunResult(run, "failed", "; ".join(problems), time.monotonic() - started, params=typed)
        os.makedirs(run.run_dir, exist_ok=True)
        summary = run_plan(plan, executor=executor, shards=shards, address=address, run_dir=run.run_dir,
                           folder=folder, should_stop=should_stop, workers=workers)
        status = summary.get("status", "failed")
        error = _run_error(run.run_dir) if status != "finished" else None
        return RunResult(run, status, error, time.monotonic() - started, read_records(run.run_dir), typed)
    except Exception as e:  # recorded in the table: one broken run must not stop the sweep
        records = read_records(run.run_dir) if os.path.isdir(run.run_dir) else []
        return RunResult(run, "failed", f"{type(e).__name__}: {e}", time.monotonic() - started, records)


def read_records(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _run_error(run_dir: str) -> str | None:
    path = os.path.join(run_dir, "events.jsonl")
    if not os.path.exists(path):
        return None
    error = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"run_failed"' in line:
                error = json.loads(line).get("error")
    return error


STOP_MARK = ".stop"  # in the sweep directory once the sweep is told to stop (worker processes look for it)


def _stop_mark(run: SweepRun) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(run.run_dir)), STOP_MARK)


def _interruptible(file, run, overrides, executor, shards, address, workers=None) -> RunResult:
    """execute_run, with a Ctrl-C outside the driver (compiling, between steps) as a stopped run;
    a run that a worker picks up after the sweep was told to stop is skipped, and a run in
    progress stops at its next step."""
    mark = _stop_mark(run)
    if os.path.exists(mark):
        return RunResult(run, "skipped", "the sweep stopped before this run")
    try:
        return execute_run(file, run, overrides, executor, shards, address, lambda: os.path.exists(mark), workers)
    except KeyboardInterrupt:
        return RunResult(run, "stopped", "interrupted")


def _worker_init(paths: list[str]) -> None:
    # Spawned workers start with a fresh sys.path: give them the parent's, so user policies load.
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)


def run_sweep(file: str, grid: dict[str, list[str]], replicates: int = 1, executor: str = "local",
              sweep_dir: str | None = None, overrides: list[str] | tuple = (), shards: int | None = None,
              address: str | None = None, parallel: int | None = None, on_run=None, on_start=None) -> dict:
    """Run every (combination, replicate); return {"sweep_dir", "runs": [RunResult...], "table"}.

    `on_start(runs)` is called once with the planned runs; `on_run(result)` as each run ends (in
    the order runs end). The grid is checked against the scenario before any run starts.
    """
    from populace.compiler import compile_file

    if replicates < 1:
        raise SweepError("--replicates must be at least 1")
    compiled = compile_file(file, list(overrides))  # a broken scenario or --set fails here, once
    params = compiled.plan["scenario"].get("params", {})
    unknown = [name for name in grid if params and name not in params]
    if unknown:
        raise SweepError(f"--grid {unknown[0]}: no param `{unknown[0]}` in the scenario "
                         f"(params: {', '.join(sorted(params))})")
    base_seed = int(compiled.plan["scenario"]["seed"])
    scenario = compiled.plan["scenario"]["name"]
    if sweep_dir is None:
        from populace.runtime.store.rundir import new_run_dir

        sweep_dir = new_run_dir(f"{scenario}-sweep")
    os.makedirs(sweep_dir, exist_ok=True)
    if os.path.exists(os.path.join(sweep_dir, STOP_MARK)):
        os.unlink(os.path.join(sweep_dir, STOP_MARK))
    runs = plan_runs(grid, replicates, base_seed, sweep_dir)
    _write_manifest(sweep_dir, file, grid, replicates, overrides, executor, runs, {})
    if on_start:
        on_start(runs)
    results: dict[int, RunResult] = {}

    def finished(result: RunResult) -> str:
        results[result.run.index] = result
        _write_manifest(sweep_dir, file, grid, replicates, overrides, executor, runs, results)
        if on_run:
            on_run(result)
        return result.status

    if executor == "local":
        workers = max(1, min(parallel or os.cpu_count() or 1, len(runs)))
        if workers == 1:
            for run in runs:
                if finished(_interruptible(file, run, list(overrides), executor, shards, address)) == "stopped":
                    break
        else:
            _run_in_processes(file, runs, list(overrides), shards, workers, finished)
    else:
        _run_on_ray(file, runs, list(overrides), shards, address, max(1, parallel or 1), finished)
    # A run stopped by Ctrl-C (the driver catches it and ends the run "stopped") ends the sweep:
    # the runs not started are rows with status "skipped".
    ordered = [results.get(r.index) or RunResult(r, "skipped", "the sweep stopped before this run") for r in runs]
    _write_manifest(sweep_dir, file, grid, replicates, overrides, executor, runs, {r.run.index: r for r in ordered})
    table = write_table(sweep_dir, ordered, list(grid))
    return {"sweep_dir": sweep_dir, "runs": ordered, "table": table}


def _run_in_processes(file, runs, overrides, shards, workers, finished) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the calling process may hold Ray's or other threads, which fork would copy half-alive.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                             initargs=(list(sys.path),)) as pool:
        futures = {pool.submit(_interruptible, file, run, overrides, "local", shards, None, 0): run for run in runs}
        collected = set()

        def collect(future, run) -> None:
            collected.add(run.index)
            try:
                result = future.result()
            except Exception as e:  # the worker process died (killed, out of memory)
                result = RunResult(run, "failed", f"worker died: {type(e).__name__}: {e}",
                                   records=read_records(run.run_dir) if os.path.isdir(run.run_dir) else [])
            finished(result)

        try:
            for future in as_completed(futures):
                collect(future, futures[future])
        except KeyboardInterrupt:
            # Ctrl-C reached the workers too (one process group): their runs end "stopped". Start
            # no more runs (the mark: a worker may already hold the next run), gather the ones in
            # progress (they stop at their next step); the runs never started become "skipped".
            if runs:
                with open(_stop_mark(runs[0]), "w"):
                    pass
            for future in futures:
                future.cancel()
            for future, run in futures.items():
                if run.index not in collected and not future.cancelled():
                    collect(future, run)


def _run_on_ray(file, runs, overrides, shards, address, parallel, finished) -> None:
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    import ray

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs = {"address": address} if address else {"include_dashboard": False}
        ray.init(log_to_driver=False, logging_level="ERROR", **kwargs)
        started = True
    try:
        # One Ray for all: each run finds it initialised and leaves it up. Runs share nothing but
        # Ray (own driver, own shard actors, own run directory), so `parallel` drivers may run at
        # once in threads; their shards then share the cluster's CPUs.
        if parallel == 1:
            for run in runs:
                if finished(_interruptible(file, run, overrides, "ray", shards, address)) == "stopped":
                    break
        else:
            stopping = threading.Event()
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                futures = [pool.submit(execute_run, file, run, overrides, "ray", shards, address, stopping.is_set)
                           for run in runs]
                collected = set()
                try:
                    pending = set(futures)
                    while pending:
                        # Wake up twice a second: a blocked wait would not see Ctrl-C until a run ends.
                        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                        for future in sorted(done, key=futures.index):
                            collected.add(future)
                            finished(future.result())  # execute_run never raises
                except KeyboardInterrupt:
                    # Only this thread hears Ctrl-C: start no more runs, and tell the drivers of the
                    # runs in progress (other threads) to stop at their next step: they end "stopped",
                    # resumable, with everything written so far.
                    stopping.set()
                    for future in futures:
                        future.cancel()
                    for future in futures:
                        if future not in collected and not future.cancelled():
                            finished(future.result())
    finally:
        if started:
            ray.shutdown()


def _write_manifest(sweep_dir, file, grid, replicates, overrides, executor, runs, results) -> None:
    from populace.runtime.store.rundir import write_atomic

    manifest = {
        "scenario_file": os.path.abspath(file), "grid": grid, "replicates": replicates,
        "overrides": list(overrides), "executor": executor,
        "runs": [dict(asdict(r), status=results[r.index].status if r.index in results else "pending",
                      error=results[r.index].error if r.index in results else None) for r in runs],
    }
    write_atomic(os.path.join(sweep_dir, "sweep.json"),
                 (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


META = ("run", "replicate", "seed", "status", "error", "seconds", "run_dir")


def table_rows(results: list[RunResult], grid_names: list[str]) -> list[dict]:
    """One row per run and record (one row for a run without records): params, meta, metrics."""
    rows = []
    taken = set(grid_names) | set(META)
    for result in results:
        run = result.run
        base = dict(run.params, **result.params)
        base.update(run=run.index, replicate=run.replicate, seed=run.seed, status=result.status,
                    error=result.error, seconds=round(result.seconds, 3), run_dir=run.run_dir)
        for record in result.records or [{}]:
            row = dict(base)
            for key, value in record.items():
                # A metric named like a param or a meta column keeps its value under `metric.<name>`.
                row[f"metric.{key}" if key in taken else key] = value
            rows.append(row)
    return rows


def write_table(sweep_dir: str, results: list[RunResult], grid_names: list[str]) -> dict:
    """sweep.csv and sweep.parquet; nested values (histograms, lists) are JSON text in both."""
    import csv
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from populace.runtime.store.rundir import write_atomic

    rows = table_rows(results, grid_names)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (dict, list)):
                row[key] = json.dumps(value, sort_keys=True)
    arrays = {name: _column([row.get(name) for row in rows]) for name in columns}
    table = pa.table(arrays) if columns else pa.table({})
    parquet_path = os.path.join(sweep_dir, "sweep.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(parquet_path, sink.getvalue().to_pybytes())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    csv_path = os.path.join(sweep_dir, "sweep.csv")
    write_atomic(csv_path, text.getvalue().encode("utf-8"))
    return {"csv": csv_path, "parquet": parquet_path, "rows": len(rows)}


def _column(values: list):
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    # Grid values arrive as text, and a column may mix kinds across runs: text keeps them all.
    return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values],
                    type=pa.string())
