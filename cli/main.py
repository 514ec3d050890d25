"""The `populace` command line: check, fmt, compile, explain, run and friends.

In: argv. Out: text on stdout/stderr and an exit code (0 fine, 1 diagnostics or a failed run,
2 bad usage). Diagnostics are printed for people (or JSON with --format json), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from populace.dsl.diagnostics import DiagnosticError, render_all, to_json


def share(text: str) -> float:
    """`5%` or `0.05` -> 0.05; a bare number above 1 is refused (5 could mean 5% or 500%)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: write 5% or 0.05") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0% and 100% (write 5% or 0.05)")
    return value


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a param declared in the scenario block (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="populace", description="Large-scale LLM agent simulations from scenario files.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="report every error in scenario files without running them")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=("text", "json"), default="text")
    _add_set(p)

    p = sub.add_parser("fmt", help="print scenario files in canonical form")
    p.add_argument("files", nargs="+")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not in canonical form")

    p = sub.add_parser("compile", help="compile a scenario into a plan (JSON)")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="write the plan here instead of stdout")
    _add_set(p)
    _add_prices(p)

    p = sub.add_parser("explain", help="show the plan for people: steps, calls, tokens and cost")
    p.add_argument("file")
    _add_set(p)
    p.add_argument("--budget", type=_usd, metavar="USD", help="say whether this budget covers the estimate")
    _add_batch(p)
    _add_prices(p)

    p = sub.add_parser("run", help="run a scenario")
    p.add_argument("file")
    _add_set(p)
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--run-dir", help="write the run here (default: runs/<scenario>-<time>)")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default: a local Ray, or a cluster with --address) or local (this machine, "
                        "without Ray: see --workers)")
    p.add_argument("--address", help="an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--shards", type=int, help="shards per population (default: one per CPU)")
    _add_workers(p)
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--cache", help="response cache (SQLite) to read and extend; default: cache.sqlite in the run directory")
    p.add_argument("--replay", action="store_true", help="answer only from the cache; refuse any new model call")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="checkpoint before every Nth agent-changing step (default: the scenario's checkpoint_every, "
                        "1; 0 turns checkpoints off)")
    p.add_argument("--save-prompts", type=share, nargs="?", const=0.01, metavar="SHARE",
                   help="keep the exact requests (system, memory, prompt) of a seeded sample of agents under "
                        "prompts/ (default 1%%; 100%% keeps every one)")
    p.add_argument("--max-failed", type=share, metavar="SHARE",
                   help="fail the run when more than this share of one ask's answers fail (default: the "
                        "scenario's max_failed, 5%%): 5%%, 0.05, 0 (any failure fails the run)")
    p.add_argument("--budget", type=_usd, metavar="USD",
                   help="stop before the call that would spend more than this in all (25usd, $25); "
                        "overrides the scenario's `budget`")
    _add_batch(p)
    _add_prices(p)
    p.add_argument("--keep-checkpoints", type=_keep, default=None, metavar="N|all",
                   help="checkpoints to keep, the newest (default 2); `all` lets `populace branch` start at any of them")
    p.add_argument("--monitor", action="store_true",
                   help="serve the live monitor page while the run goes on (and after it, until Ctrl-C)")
    _add_monitor_address(p)

    p = sub.add_parser("monitor", help="serve the live monitor page for a run directory (in progress or finished)")
    p.add_argument("run_dir")
    _add_monitor_address(p)

    p = sub.add_parser("personas", help="sample and print a population's personas without running the simulation")
    p.add_argument("file")
    p.add_argument("-n", type=int, default=20, help="agents to show, from agent 0 (default 20)")
    p.add_argument("--population", help="the population (default: the first declared with a persona)")
    p.add_argument("--format", choices=("table", "jsonl", "csv"), default="table",
                   help="table (default), or jsonl / csv on stdout with the summary on stderr")
    p.add_argument("--summary-size", type=int, default=10_000, metavar="N",
                   help="summarise each field over agents [0, N) (default 10000, at most the population; 0: no summary)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--cache", help="response cache (SQLite) for texts written by LLM models")
    _add_set(p)

    p = sub.add_parser("prompt", help="print the exact request (system, memory, prompt) an agent was sent at an ask")
    p.add_argument("run_dir")
    p.add_argument("--agent", type=int, required=True, help="the agent's id (0 .. N-1)")
    p.add_argument("--step", help="the ask: its number in the run (3: the third ask executed), or its id "
                                  "(ask.guess, ask.guess[round=3]); default the last ask")
    p.add_argument("--iteration", help="the ask's iteration, e.g. round=3 (default: its last)")
    p.add_argument("--cache", help="the response cache to replay from (default: the run's cache.sqlite)")

    p = sub.add_parser("resume", help="continue a run whose driver died, from its last checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--executor", choices=("ray", "local"), default=None,
                   help="where the shards run (default: where the run started)")
    p.add_argument("--address", help="an existing Ray cluster (or set RAY_ADDRESS)")
    _add_workers(p)
    p.add_argument("--cache", help="response cache (default: cache.sqlite in the run directory)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="checkpoint before every N-th agent step (default: what the run used)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--budget", type=_usd, metavar="USD",
                   help="the dollars the whole run may spend, what was spent before included (default: its budget)")

    p = sub.add_parser("sweep", help="run a scenario over a grid of params and replicates; one table of all records")
    p.add_argument("file")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a param and the values to try (repeatable: every combination runs); "
                        "--set NAME=V1,V2 says the same, --set NAME=V fixes a param for every run")
    p.add_argument("--replicates", type=int, default=1, metavar="N",
                   help="runs per combination, each with its own seed derived from the scenario's (default 1)")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default: runs one after another on one shared Ray) or local (runs in parallel processes)")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="runs at once (local: worker processes, default one per CPU; ray: default 1, one after another)")
    p.add_argument("--address", help="an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--shards", type=int, help="shards per population in each run")
    p.add_argument("--sweep-dir", help="write the sweep here (default: runs/<scenario>-sweep-<time>)")
    _add_set(p)

    from . import branch, replay

    replay.add_parser(sub)
    branch.add_parsers(sub)
    return parser


def _keep(text: str) -> int:
    """argparse type of --keep-checkpoints: a count of at least 1, or `all` (0: keep every one)."""
    if text.strip().lower() == "all":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: write a number of checkpoints (1 or more) or `all`")
    return value


def _add_prices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prices", type=_prices, metavar="FILE",
                   help="a JSON prices table (model name -> {input, output, cache_read, cache_write} in USD per "
                        "million tokens) over the built-in one; a model block's own `price` still wins")


def _prices(path: str) -> dict:
    from populace.compiler.prices import PricesError, load_prices

    try:
        return load_prices(path)
    except PricesError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_count, metavar="N",
                   help="with --executor local: run the shards in N worker processes (0: in the driver's own "
                        "process; default: one per CPU from 20,000 agents, else 0)")


def _workers_on_ray(args) -> bool:
    """--workers with --executor ray would be silently ignored: say so instead (True: refused).
    (`resume` leaves this to resume_run, which knows where a run without --executor resumes.)"""
    if args.workers is not None and args.executor == "ray":
        print("error: --workers is for --executor local; on Ray every shard is an actor of its own, so "
              "use --shards N to set how many run at once", file=sys.stderr)
        return True
    return False


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _add_batch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", action="store_true",
                   help="send every Anthropic and OpenAI model's asks through the provider's batch API (half "
                        "price, replies within 24 h); a model's own `batch = false` stands")


def _add_monitor_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8080, help="monitor port (default: 8080)")
    p.add_argument("--host", default="127.0.0.1",
                   help="monitor address (default: 127.0.0.1); any other needs the access token")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except DiagnosticError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_check(args) -> int:
    from populace.dsl import load_program

    all_diagnostics, sources = [], {}
    for file in args.files:
        try:
            program = load_program(file)
            sources.update(program.sources)
            all_diagnostics.extend(_compile_diagnostics(program, args.overrides, file))
        except DiagnosticError as e:
            all_diagnostics.extend(e.diagnostics)
            sources.update(e.sources)
    errors = [d for d in all_diagnostics if d.severity == "error"]
    if args.format == "json":
        print(to_json(all_diagnostics))
    elif all_diagnostics:
        print(render_all(all_diagnostics, sources), file=sys.stderr if errors else sys.stdout)
    if not errors and args.format == "text":
        names = ", ".join(args.files)
        print(f"ok: {names}")
    return 1 if errors else 0


def _compile_diagnostics(program, overrides, file: str) -> list:
    """Run every compiler pass, then what only the runtime can know (cli/checks.py); return the
    warnings and those errors (the compiler's errors arrive as DiagnosticError)."""
    from populace.compiler import compile_program

    from .checks import empty_file, runtime_checks

    empty = empty_file(program)
    if empty:
        return empty
    compiled = compile_program(program, overrides=overrides)
    return compiled.warnings + runtime_checks(compiled.plan, os.path.dirname(os.path.abspath(file)))


def cmd_fmt(args) -> int:
    from populace.dsl import load_program
    from populace.dsl.format import format_source

    status = 0
    for file in args.files:
        with open(file, "rb") as f:
            original = f.read().decode("utf-8", errors="replace")
        load_program(file)  # refuse to format a file with errors: diagnostics, exit 1
        formatted = format_source(original, file)
        if args.check:
            if formatted != original:
                print(f"would reformat {file}", file=sys.stderr)
                status = 1
        elif args.write:
            if formatted != original:
                with open(file, "w", encoding="utf-8") as f:
                    f.write(formatted)
                print(f"reformatted {file}")
        else:
            sys.stdout.write(formatted)
    return status


def cmd_compile(args) -> int:
    from populace.compiler import compile_file

    compiled = compile_file(args.file, args.overrides, prices=args.prices)
    _print_warnings(compiled)
    if args.output:
        from populace.runtime.store.rundir import write_atomic

        write_atomic(args.output, compiled.data + b"\n")
        print(f"plan {compiled.plan_hash[:12]} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(json.dumps(compiled.plan, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return 0


def _print_warnings(compiled) -> None:
    if compiled.warnings:
        print(render_all(compiled.warnings, compiled.sources), file=sys.stderr)


def _one_line(error: Exception) -> str:
    """An error as one line: Ray's errors carry the worker's traceback, the cause names the problem."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines and ("Traceback" in text or len(lines) > 3) else (lines[0] if lines else "")
    return f"{type(cause).__name__}: {last.strip()}" if last else type(cause).__name__


def _usd(text: str) -> float:
    """argparse type of --budget: 25usd, $25, 25.50."""
    from populace.runtime.models.budget import BudgetError, parse_usd

    try:
        return parse_usd(text)
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_run(args) -> int:
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict

    from populace.runtime.engine.preflight import unsupported
    from populace.runtime.engine.run import run_plan

    from .progress import Progress

    if _workers_on_ray(args):
        return 2
    compiled = compile_file(args.file, args.overrides, batch=args.batch, prices=args.prices)
    _print_warnings(compiled)
    if any(d.code == "W1003" for d in compiled.warnings):
        print(f"error: {args.file} uses params of a scenario that imports it and has no scenario block of its "
              "own; run the scenario that imports it", file=sys.stderr)
        return 1
    raw = compiled.plan
    if args.seed is not None:
        raw = _with_seed(raw, args.seed)
    plan = plan_from_dict(raw)
    folder = os.path.dirname(os.path.abspath(args.file))  # the scenario's own Python files live here
    budget = args.budget if args.budget is not None else plan.settings.get("budget")
    problems = unsupported(plan, replay=args.replay, folder=folder, budget=budget)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    if args.shards is not None and args.shards < 1:
        print("error: --shards must be at least 1", file=sys.stderr)
        return 2
    if args.replay and not args.cache:
        print("error: --replay needs --cache PATH (the cache to replay from)", file=sys.stderr)
        return 2
    run_dir, monitor = args.run_dir, None
    if args.monitor:
        from populace.runtime.store.rundir import new_run_dir

        run_dir = run_dir or new_run_dir(plan.scenario.name)
        os.makedirs(run_dir, exist_ok=True)
        monitor = _start_monitor(run_dir, args.host, args.port)
        if monitor is None:
            return 1
    try:
        if args.checkpoint_every is not None and args.checkpoint_every < 0:
            print("error: --checkpoint-every must be 0 (off) or more", file=sys.stderr)
            return 2
        try:
            summary = run_plan(plan, executor=args.executor, shards=args.shards, address=args.address, folder=folder,
                               run_dir=run_dir, display=Progress(quiet=args.quiet), cache=args.cache,
                               replay=args.replay, max_failed=args.max_failed,
                               prompts={"share": args.save_prompts} if args.save_prompts is not None else None,
                               checkpoint_every=args.checkpoint_every, budget=budget,
                               keep_checkpoints=args.keep_checkpoints, workers=args.workers)
        except OSError as e:
            return _unwritable(e, run_dir)
        except Exception as e:  # the shards could not start (a worker that cannot import a module, ...)
            print(f"error: the run could not start: {_one_line(e)}", file=sys.stderr)
            return 1
        from .progress import print_summary

        print_summary(summary)
        code = _status_code(summary)
        if monitor is not None:
            print("the monitor keeps serving the finished run; Ctrl-C to quit", flush=True)
            try:
                monitor.wait()
            except KeyboardInterrupt:
                pass
        return code
    finally:
        if monitor is not None and monitor.poll() is None:
            import subprocess

            monitor.terminate()
            try:
                monitor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                monitor.kill()


def _monitor_token(host: str) -> tuple[str | None, bool]:
    """The access token for an exposed monitor: POPULACE_MONITOR_TOKEN, or a new one (to be printed)."""
    import os
    import secrets

    from populace.runtime.monitor.auth import exposed

    if not exposed(host):
        return None, False
    if os.environ.get("POPULACE_MONITOR_TOKEN"):
        return os.environ["POPULACE_MONITOR_TOKEN"], False
    return secrets.token_urlsafe(24), True


def _monitor_url(host: str, port: int, token: str | None, show_token: bool) -> str:
    import socket

    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/"
    if token and show_token:
        return url + f"?token={token}"
    if token:
        return url + "  (token: POPULACE_MONITOR_TOKEN)"
    return url


def _start_monitor(run_dir: str, host: str, port: int):
    """Serve the monitor from a child process (NiceGUI wants a main thread); wait until it answers."""
    import os
    import socket
    import subprocess
    import time

    # The port must be free before the child starts: a probe would otherwise find another program's
    # page there and report it as ours.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as e:
        print(f"error: the monitor cannot listen on {host}:{port}: {e.strerror or e}; choose another --port",
              file=sys.stderr)
        return None
    token, generated = _monitor_token(host)
    env = dict(os.environ)
    if token:
        env["POPULACE_MONITOR_TOKEN"] = token  # the environment, not argv: argv is visible to other users
    # Its own session: a Ctrl-C on the terminal stops the run, and the page stays up to show it.
    child = subprocess.Popen([sys.executable, "-m", "populace.runtime.monitor", run_dir, "--host", host,
                              "--port", str(port), "--watch-pid", str(os.getpid())], env=env, start_new_session=True)
    probe = "127.0.0.1" if host in ("0.0.0.0", "localhost") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"error: the monitor could not start on {host}:{port} (is the port in use?)", file=sys.stderr)
            return None
        try:
            with socket.create_connection((probe, port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    print(f"monitor: {_monitor_url(host, port, token, generated)}", flush=True)
    return child


def cmd_monitor(args) -> int:
    import os

    from populace.runtime.monitor.page import serve

    if not os.path.isdir(args.run_dir):
        print(f"error: no run directory {args.run_dir}", file=sys.stderr)
        return 2
    problem = _newer_run_dir(args.run_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    token, generated = _monitor_token(args.host)
    print(f"monitor: {_monitor_url(args.host, args.port, token, generated)}", flush=True)
    serve(args.run_dir, args.host, args.port, token)
    return 0


def _newer_run_dir(run_dir: str) -> str | None:
    """Why this Populace cannot show a run directory written by a newer one (plan or events), or None."""
    import os

    from populace.compiler.plan import SUPPORTED_MAJOR, PlanError, check_version

    from populace.runtime.store.events import read_events
    from populace.runtime.store.rundir import NewerFormatError

    try:
        with open(os.path.join(run_dir, "plan.json"), encoding="utf-8") as f:
            raw = json.load(f)
        if str(raw.get("plan_version", "")).split(".")[0].isdigit():
            if int(str(raw["plan_version"]).split(".")[0]) > SUPPORTED_MAJOR:
                check_version(raw)
    except (OSError, ValueError, AttributeError):
        pass  # not written yet (a run starting) or damaged: the page shows what it can
    except PlanError as e:
        return f"{os.path.join(run_dir, 'plan.json')}: {e}"
    try:
        read_events(os.path.join(run_dir, "events.jsonl"))
    except OSError:
        pass
    except NewerFormatError as e:
        return str(e)
    return None


def _with_seed(raw: dict, seed: int) -> dict:
    from populace.compiler.plan import plan_hash

    raw = json.loads(json.dumps(raw))
    raw["scenario"]["seed"] = seed
    raw["plan_hash"] = plan_hash(raw)
    return raw


def cmd_explain(args) -> int:
    from populace.compiler import compile_file
    from populace.compiler.explain import explain

    compiled = compile_file(args.file, args.overrides, batch=args.batch, prices=args.prices)
    _print_warnings(compiled)
    sys.stdout.write(explain(compiled, budget=args.budget))
    return 0


def cmd_personas(args) -> int:
    from populace.compiler import compile_file

    from .personas import run

    if args.n < 0 or args.summary_size < 0:
        print("error: -n and --summary-size must not be negative", file=sys.stderr)
        return 2
    compiled = compile_file(args.file, args.overrides)
    _print_warnings(compiled)
    raw = compiled.plan if args.seed is None else _with_seed(compiled.plan, args.seed)
    return run(raw, args.population, args.n, args.format, args.summary_size,
               options={"cache": args.cache} if args.cache else None)


COMMANDS = {"personas": cmd_personas, "run": cmd_run, "check": cmd_check, "fmt": cmd_fmt, "compile": cmd_compile, "explain": cmd_explain}
COMMANDS["monitor"] = cmd_monitor


def cmd_resume(args) -> int:
    from populace.runtime.engine.resume import ResumeError, resume_run

    from .progress import Progress, print_summary

    try:
        summary = resume_run(args.run_dir, executor=args.executor, address=args.address,
                             display=Progress(quiet=args.quiet), workers=args.workers,
                             cache=args.cache, checkpoint_every=args.checkpoint_every, budget=args.budget)
    except ResumeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        return _unwritable(e, args.run_dir)
    print_summary(summary)
    return _status_code(summary)


def _unwritable(error: OSError, run_dir: str | None) -> int:
    """A full disk, a read-only or missing directory: one line naming the file and the reason."""
    import shlex

    from populace.runtime.store.checkpoints import checkpoints_written

    import errno

    where = f" {error.filename}" if error.filename else " its files"
    if run_dir and checkpoints_written(run_dir):
        then = f"`populace resume {shlex.quote(run_dir)}` continues from the last checkpoint"
    else:
        then = "run it again"
    full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    when = "once there is room" if full else "once the directory can be written"
    print(f"error: the run cannot write{where}: {error.strerror or error}. Everything written before stays; "
          f"{when}, {then}.", file=sys.stderr)
    return 1


def _status_code(summary: dict) -> int:
    """0 finished, 130 stopped (Ctrl-C or a stop request), 1 failed; say how to go on when there is a way."""
    import os
    import shlex

    from populace.runtime.store.checkpoints import checkpoints_written

    status, run_dir = summary["status"], summary["run_dir"]
    if summary.get("stopped_by") == "budget":
        from populace.runtime.models.budget import format_usd

        spent, budget = summary.get("cost_usd") or 0.0, summary.get("budget_usd") or 0.0
        more = max(budget * 2, spent + 1)
        print(f"stopped by the budget: {format_usd(spent)} of {format_usd(budget)} spent. The calls of the step it "
              f"stopped in are cached; `populace resume {shlex.quote(os.fspath(run_dir))} --budget {more:g}usd` "
              "continues from the checkpoint before that step without paying for them again", file=sys.stderr)
        return 130
    if status != "finished" and checkpoints_written(run_dir):
        kept = "stopped" if status == "stopped" else "failed"
        then = "" if status == "stopped" else (" once the cause is fixed outside the scenario (resume runs the saved "
                                               "plan.json: a fix to the scenario file, such as removing `batch = true` "
                                               "or a value out of its range, needs a new run)")
        print(f"{kept}: everything written so far is kept; `populace resume {shlex.quote(os.fspath(run_dir))}` "
              f"continues from the last checkpoint{then}", file=sys.stderr)
    return {"finished": 0, "stopped": 130}.get(status, 1)


COMMANDS["resume"] = cmd_resume


def cmd_sweep(args) -> int:
    from populace.cli.sweep import SweepError, parse_grid, run_sweep, split_sets

    if args.shards is not None and args.shards < 1:
        print("error: --shards must be at least 1", file=sys.stderr)
        return 2
    if args.parallel is not None and args.parallel < 1:
        print("error: --parallel must be at least 1", file=sys.stderr)
        return 2
    try:
        fixed, swept = split_sets(args.overrides)  # --set a=1,2 sweeps a, like --grid a=1,2
        grid = parse_grid(args.grid + swept)
        progress = _SweepProgress()
        with progress:
            outcome = run_sweep(args.file, grid, replicates=args.replicates, executor=args.executor,
                                sweep_dir=args.sweep_dir, overrides=fixed, shards=args.shards,
                                address=args.address, parallel=args.parallel, on_start=progress.start,
                                on_run=progress.finished)
    except SweepError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    failed = [r for r in outcome["runs"] if r.status != "finished"]
    table = outcome["table"]
    print(f"{len(outcome['runs']) - len(failed)} of {len(outcome['runs'])} runs finished; "
          f"table of {table['rows']} rows: {table['csv']}, {table['parquet']}")
    for r in failed:
        print(f"  {r.status}: {r.run.run_dir}" + (f": {r.error}" if r.error else ""), file=sys.stderr)
    return 1 if failed else 0


class _SweepProgress:
    """Runs done out of all: a bar on a terminal, one line per finished run otherwise."""

    def __init__(self):
        self.bar = None
        self.total = self.done = self.failed = 0

    def __enter__(self):
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                                TimeElapsedColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=None)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, runs) -> None:
        self.total = len(runs)
        if self.bar is not None:
            self.bar.update(self.task, total=self.total)
        else:
            print(f"sweep: {self.total} runs", flush=True)

    def finished(self, result) -> None:
        self.done += 1
        self.failed += result.status != "finished"
        params = " ".join(f"{k}={v}" for k, v in result.run.params.items())
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=f"{self.failed} failed")
            if result.status != "finished":
                self.bar.console.print(f"failed: {params} replicate {result.run.replicate}: {result.error}",
                                       markup=False, highlight=False)  # errors hold brackets: error[E1021]
        else:
            print(f"[{self.done}/{self.total}] {result.status} {params} replicate {result.run.replicate} "
                  f"seed {result.run.seed} in {result.seconds:.1f}s -> {result.run.run_dir}", flush=True)


COMMANDS["sweep"] = cmd_sweep


def cmd_prompt(args) -> int:
    from .prompts import run

    return run(args.run_dir, args.agent, args.step, args.iteration, args.cache)


COMMANDS["prompt"] = cmd_prompt


def cmd_replay(args) -> int:
    from .replay import cmd_replay

    return cmd_replay(args)


COMMANDS["replay"] = cmd_replay


def cmd_branch(args) -> int:
    from .branch import cmd_branch

    return cmd_branch(args)


def cmd_diff(args) -> int:
    from .branch import cmd_diff

    return cmd_diff(args)


COMMANDS["branch"] = cmd_branch
COMMANDS["diff"] = cmd_diff

if __name__ == "__main__":
    sys.exit(main())
