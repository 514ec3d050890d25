"""The AgentScope paper's dummy-agent benchmark: every agent answers a random number after 1 s.

Pan et al. (2024), section 4: agents that sleep 1 s and reply with a random number, one round,
10k / 100k / 1M agents. Here: a population of N agents on a `mock` model with `latency = 1s` and
`in_flight` large enough for every call to wait at once, one `ask` (a whole number in 0..100: the
mock's seeded hash is the random number). Each size runs `populace run` in a fresh process on a
local Ray (start-up included) and reports the wall time, the run time (summary.json) and the ask
step itself (its step_finished event), next to the paper's figures.

What the mock's latency emulates, and what it does not: MockModel._wait sleeps
ceil(calls / in_flight share) x latency per shard, i.e. one 1 s sleep per wave of calls, then
computes every answer vectorised. It does not hold a million open requests, sockets or
coroutines; so this measures our runtime's overhead around a model that answers everything in
1 s (sharding, persona and prompt handling, answers, aggregates, the run directory), not a client
driving a million concurrent connections (see docs/performance.md, LLM throughput, for that).

    python benchmarks/paper_efficiency.py [--sizes 10000,100000,1000000] [--in-flight 1000000]
                                          [--latency 1] [--checkpoint-every 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO = """
scenario paper_efficiency {{
  seed = 1
  param agents = 10_000
}}

model dummy {{
  provider  = mock
  latency   = {latency}s
  in_flight = {in_flight}
}}

agent Dummy {{
  model = dummy
}}

population agents = param.agents x Dummy

workflow {{
  ask agents "Report a random number from 0 to 100." -> number: int in 0..100
  record mean_number = mean(agents.number), answered = count(agents.number)
}}
"""

# The paper's figures for 1,000,000 dummy agents (its section 4, efficiency).
PAPER = [("AgentScope actor mode, 4 machines x 64 cores", "1,000,000", "40 s"),
         ("plain Python async", "1,000,000", "8.6 h"),
         ("serial", "1,000,000", "12 days")]


def measure(scenario: Path, size: int, checkpoint_every: int | None) -> dict:
    run_dir = tempfile.mkdtemp(prefix=f"populace-paper-{size}-")
    cmd = [sys.executable, "-m", "populace.cli", "run", str(scenario), "--set", f"agents={size}",
           "--quiet", "--run-dir", run_dir]
    if checkpoint_every is not None:
        cmd += ["--checkpoint-every", str(checkpoint_every)]
    began = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"run of {size} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    ask = [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()
           if '"step_finished"' in line and '"op": "ask"' in line]
    metrics = json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["answered"] == size, metrics
    return {"agents": size, "wall": wall, "run": summary["seconds"], "ask": ask[0]["seconds"],
            "shards": summary["shards"]["agents"], "mean": metrics["mean_number"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--in-flight", type=int, default=1_000_000)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--checkpoint-every", type=int, help="pass to populace run (0: no checkpoints)")
    args = parser.parse_args()
    scenario = Path(tempfile.mkdtemp(prefix="populace-paper-")) / "paper_efficiency.pop"
    scenario.write_text(SCENARIO.format(latency=args.latency, in_flight=args.in_flight))
    rows = [measure(scenario, int(s), args.checkpoint_every) for s in args.sizes.split(",")]
    print(f"mock model: latency {args.latency:g} s, in_flight {args.in_flight:,}; {os.cpu_count()} cores; "
          f"checkpoints {'every ask' if args.checkpoint_every in (None, 1) else 'off' if args.checkpoint_every == 0 else args.checkpoint_every}")
    print()
    print("| agents | wall s (Ray start-up included) | run s | ask step s | shards | mean answer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['agents']:,} | {r['wall']:.1f} | {r['run']:.1f} | {r['ask']:.2f} | {r['shards']} | {r['mean']:.2f} |")
    print()
    print("| the paper (1 s per agent) | agents | time |")
    print("|---|---|---|")
    for name, agents, seconds in PAPER:
        print(f"| {name} | {agents} | {seconds} |")


if __name__ == "__main__":
    main()
