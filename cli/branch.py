"""`populace branch RUN --at round=5 --set tax=0.3` and `populace diff RUN_A RUN_B`.

branch — In: a run directory that kept the checkpoint at the branch point (`populace run
--keep-checkpoints all`), the scenario file it was compiled from (unchanged since: its sha256 is in
the plan), and param overrides. Out: a new run directory (default RUN-branch-<time>) whose history up
to the checkpoint is the parent's (its events, metrics lines, ask tables and checkpoint are copied)
and whose plan is the scenario compiled again with the parent's params and the new ones; the run
then continues from that checkpoint under the new plan, with the parent's response cache, so only
calls that differ from the parent's are paid. The checkpoint is the one taken before the first
agent-changing step of the first iteration that matches `--at`.

diff — In: two run directories. Out: one table, a row per record and value: the record's step, its
number within that step (#1, #2, ...: records are paired by step and order), the value in each run
and the difference (B - A) for numbers; only the rows that differ unless `--all`; `--csv` writes it
as CSV.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time


def add_parsers(sub) -> None:
    p = sub.add_parser("branch", help="start a new run from a checkpoint of another, with params changed")
    p.add_argument("run_dir", help="the parent run (it must have kept the checkpoint: run --keep-checkpoints all)")
    p.add_argument("--at", required=True, metavar="VAR=VALUE[,VAR=VALUE]",
                   help="where to branch: the first iteration with these loop variables, e.g. round=5")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="a param's new value from the branch point on (param.tax=0.3 or tax=0.3; repeatable)")
    p.add_argument("--run-dir", dest="out", help="write the branch here (default: RUN-branch-<time>)")
    p.add_argument("--executor", choices=("ray", "local"), default=None,
                   help="where the shards run (default: where the parent ran)")
    p.add_argument("--address", help="an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")

    p = sub.add_parser("diff", help="compare two runs' records in one table (a branch and its parent, two seeds, ...)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--csv", action="store_true", help="write the table as CSV")
    p.add_argument("--all", action="store_true", help="also the rows where both runs agree")


class BranchError(Exception):
    def __init__(self, message: str, rendered: bool = False):
        super().__init__(message)
        self.rendered = rendered  # a compiler diagnostic, printed as it is


def cmd_branch(args) -> int:
    from populace.runtime.engine.resume import ResumeError, resume_run

    from .progress import Progress, print_summary

    try:
        out, parent_calls = make_branch(args.run_dir, args.at, args.overrides, args.out)
    except BranchError as e:
        print(str(e) if e.rendered else f"error: {e}", file=sys.stderr)
        return 1
    try:
        summary = resume_run(out, executor=args.executor, address=args.address, display=Progress(quiet=args.quiet))
    except ResumeError as e:
        print(f"error: the branch could not start: {e}", file=sys.stderr)
        return 1
    print_summary(summary)
    made = summary.get("calls", 0) - parent_calls
    print(f"branch: {out} (from {args.run_dir} at {args.at}); {made:,} calls after the branch point, "
          f"{parent_calls:,} before it were the parent's")
    return 0 if summary["status"] == "finished" else 1


def make_branch(run: str, at: str, overrides: list[str], out: str | None) -> tuple[str, int]:
    """Lay out the branch's run directory; return it and the calls made before the branch point."""
    from populace.compiler import compile_file
    from populace.compiler.plan import PlanError, plan_bytes, plan_from_dict, read_plan
    from populace.dsl.diagnostics import DiagnosticError
    from populace.runtime.store import manifest as manifests
    from populace.runtime.store.checkpoints import checkpoints
    from populace.runtime.store.events import read_events
    from populace.runtime.store.rundir import RunDir, label_parts

    try:
        parent = read_plan(os.path.join(run, "plan.json"))
        events = read_events(os.path.join(run, "events.jsonl"))
    except (PlanError, OSError) as e:
        raise BranchError(f"{run} cannot be branched: {e}") from None
    wanted = _at(at)
    marks = [e for e in events if e.get("type") == "checkpoint" and isinstance(e.get("seq"), int)]
    seq = next((e["seq"] for e in marks if wanted <= set(label_parts(e.get("iteration", "")))), None)
    if seq is None:
        shown = list(dict.fromkeys(e.get("iteration") or "(top level)" for e in marks))  # in run order
        listed = ", ".join(shown[:12]) + (f", ... ({len(shown)} iterations)" if len(shown) > 12 else "")
        names = sorted({name for e in marks for name, _ in label_parts(e.get("iteration", ""))})
        raise BranchError(f"{run} has no checkpoint in an iteration with {at} (loop variables here: "
                          f"{', '.join(names) or 'none'}; checkpoints at: {listed or 'none'})")
    kept = {state["seq"]: path for path, state in checkpoints(run, parent) if isinstance(state.get("seq"), int)}
    if seq not in kept:
        label = next(e["iteration"] for e in marks if e["seq"] == seq)
        cache = os.path.join(run, "cache.sqlite")
        free = (f"; with --cache {cache} that run is answered from the cache and costs nothing"
                if os.path.exists(cache) else "")
        raise BranchError(
            f"{run} no longer has its checkpoint at {label}: a run keeps only its last "
            f"{len(kept) or 2} checkpoints. Run the scenario again with --keep-checkpoints all to branch anywhere{free}")
    started = next((e for e in events if e.get("type") == "run_started"), {})
    source = _scenario_file(parent, started.get("scenario_dir"))
    params = [f"{k}={json.dumps(v)}" for k, v in parent.params.items()]
    try:
        compiled = compile_file(source, params + list(overrides))
    except DiagnosticError as e:
        raise BranchError(e.render(), rendered=True) from None
    raw = compiled.plan
    if raw["scenario"]["seed"] != parent.seed:  # the parent ran with --seed
        from .main import _with_seed

        raw = _with_seed(raw, parent.seed)
    child = plan_from_dict(raw)
    _same_shape(parent, child)
    out = out or f"{run.rstrip('/')}-branch-{time.strftime('%Y%m%d-%H%M%S')}"
    if os.path.exists(out) and os.listdir(out):
        raise BranchError(f"{out} exists and is not empty; name another with --run-dir")
    history, state = _lay_out(run, out, events, seq, kept[seq], child, plan_bytes(child))
    directory = RunDir(out)
    try:
        parent_manifest = manifests.read(run) or {}
        cache = parent_manifest.get("cache") or os.path.abspath(os.path.join(run, "cache.sqlite"))
        shards = {p: len(r) for p, r in state["ranges"].items()}
        manifests.start(directory, child, started.get("executor") or "local", shards, cache, parent_manifest.get("budget_usd"))
        m = manifests.read(out)
        m["branched_from"] = {"run": os.path.abspath(run), "plan_hash": parent.plan_hash, "checkpoint": seq,
                              "at": at, "set": list(overrides)}
        directory.write_json(manifests.MANIFEST, m)
    finally:
        directory.close()
    from populace.runtime.store.fold import RunState

    return out, RunState.from_events(history).calls  # the calls the parent had made at the branch point


def _at(text: str) -> set:
    parts = set()
    for item in text.strip().strip("[]").split(","):
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise BranchError(f"--at {text!r}: write the loop variables of the iteration, e.g. --at round=5")
        parts.add((name.strip(), value.strip()))
    return parts


def _scenario_file(plan, folder: str | None) -> str:
    """The scenario file the plan was compiled from, checked against the sha256 the plan holds."""
    files = plan.scenario.sources
    main = plan.scenario.source
    for name, digest in files.items():
        found = _find(name, folder)
        if found is None:
            raise BranchError(f"the scenario file {name} is not here (nor in {folder}); branch compiles it again")
        with open(found, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digest:
                raise BranchError(f"{found} changed since the run: a branch must start from the text the parent "
                                  "ran (restore it, or run the changed scenario as a new run)")
        if name == main:
            main = found
    return _find(main, folder) or main


def _find(name: str, folder: str | None) -> str | None:
    for candidate in (name, os.path.join(folder or "", os.path.basename(name))):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _same_shape(parent, child) -> None:
    """The checkpoint fits the new plan: the same steps, populations of the same sizes, the same environments."""
    if [s.id for s in parent.steps()] != [s.id for s in child.steps()]:
        raise BranchError("the new params change the workflow's steps; a branch can change values, not the workflow")
    for name, pop in parent.populations.items():
        other = child.populations.get(name)
        if other is None or other.size != pop.size:
            raise BranchError(f"population `{name}` would have {other.size if other else 0:,} agents instead of "
                              f"{pop.size:,}; a branch keeps the parent's agents")
    if set(parent.models) != set(child.models):
        raise BranchError("the new params change the models declared; a branch keeps them")
    # The checkpoint holds the environments' values and personas are sampled again from the plan:
    # a param that shapes either would leave the branch half old, half new, so it is refused.
    for name, env in parent.environments.items():
        if child.environments.get(name) != env:
            raise BranchError(f"the new params change environment `{name}` (its fields' starting values or "
                              "settings), whose values the checkpoint holds; a branch can change what the "
                              "workflow does with a param, not an environment's start. Run the changed scenario "
                              "as a new run instead")
    for name, persona in parent.personas.items():
        if child.personas.get(name) != persona:
            raise BranchError(f"the new params change persona `{name}`; the agents before the branch point had "
                              "the parent's personas. Run the changed scenario as a new run instead")


def _lay_out(run: str, out: str, events: list, seq: int, checkpoint: str, child, plan_data: bytes) -> tuple[list, dict]:
    """The branch's history: the parent's events up to the checkpoint, its metrics lines and ask
    tables until then, the checkpoint (now of the new plan) and the new plan. Returns those events
    and the checkpoint's driver state."""
    from populace.runtime.store.rundir import ask_file, write_atomic

    os.makedirs(out, exist_ok=True)
    cut = next(i for i, e in enumerate(events) if e.get("type") == "checkpoint" and e.get("seq") == seq)
    history = events[:cut + 1]
    with open(os.path.join(out, "events.jsonl"), "w", encoding="utf-8") as f:
        for e in history:
            f.write(json.dumps(e, sort_keys=True) + "\n")
    with open(os.path.join(checkpoint, "driver.json"), encoding="utf-8") as f:
        state = json.load(f)
    with open(os.path.join(run, "metrics.jsonl"), "rb") as f:
        lines = f.readlines()[:state["metrics_lines"]]
    write_atomic(os.path.join(out, "metrics.jsonl"), b"".join(lines))
    for e in history:  # the answers of the asks finished before the branch point
        if e.get("type") == "step_finished" and e.get("op") == "ask":
            for part in range(64):
                name = ask_file(e["step"], e.get("iteration", ""), part)
                if not os.path.exists(os.path.join(run, name)):
                    break
                os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
                shutil.copy2(os.path.join(run, name), os.path.join(out, name))
    if os.path.exists(os.path.join(run, "personas.parquet")):
        shutil.copy2(os.path.join(run, "personas.parquet"), os.path.join(out, "personas.parquet"))
    target = os.path.join(out, "checkpoints", os.path.basename(checkpoint))
    shutil.copytree(checkpoint, target)
    state["plan_hash"] = child.plan_hash  # the parent's state, continued under the new plan
    write_atomic(os.path.join(target, "driver.json"), (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
    write_atomic(os.path.join(out, "plan.json"), plan_data + b"\n")
    return history, state


# ---------------------------------------------------------------- diff
def cmd_diff(args) -> int:
    rows = diff_rows(args.run_a, args.run_b)
    if rows is None:
        return 1
    shown = rows if args.all else [r for r in rows if r[3] != r[4]]
    if args.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["step", "record", "value", "a", "b", "b_minus_a"])
        w.writerows(shown)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"A = {args.run_a}   B = {args.run_b}")
    for name, justify in (("step", "left"), ("record", "left"), ("value", "left"), ("A", "right"),
                          ("B", "right"), ("B - A", "right")):
        table.add_column(name, justify=justify)
    for step, iteration, name, a, b, d in shown:
        table.add_row(step, iteration, name, _cell(a), _cell(b), _cell(d))
    console = Console()
    console.print(table)
    same = len(rows) - sum(1 for r in rows if r[3] != r[4])
    console.print(f"{len(rows):,} values compared: {len(rows) - same:,} differ, {same:,} agree"
                  + ("" if args.all or not same else " (--all shows them too)"))
    return 0


def diff_rows(run_a: str, run_b: str) -> list | None:
    """(step, record number, value name, in A, in B, B - A) for every value of every record of either run."""
    runs = []
    for run in (run_a, run_b):
        try:
            with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
                runs.append([json.loads(line) for line in f if line.strip()])
        except (OSError, ValueError) as e:
            print(f"error: cannot read the records of {run}: {e}", file=sys.stderr)
            return None
    by_step = []
    for records in runs:
        grouped: dict = {}
        for r in records:
            grouped.setdefault(r.get("step", ""), []).append(r)
        by_step.append(grouped)
    rows = []
    for step in dict.fromkeys([*by_step[0], *by_step[1]]):
        a_rows, b_rows = by_step[0].get(step, []), by_step[1].get(step, [])
        for k in range(max(len(a_rows), len(b_rows))):
            a = a_rows[k] if k < len(a_rows) else {}
            b = b_rows[k] if k < len(b_rows) else {}
            keys = [x for x in dict.fromkeys([*a, *b]) if x != "step"]
            for name in keys:
                va, vb = a.get(name), b.get(name)
                rows.append((step[5:] if step.startswith("step:") else step, f"#{k + 1}", name, va, vb, _minus(vb, va)))
    return rows


def _minus(b, a):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return round(b - a, 12)
    return None


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v)
        return text if len(text) < 40 else text[:37] + "..."
    return str(v)
