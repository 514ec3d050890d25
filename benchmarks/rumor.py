"""Network benchmark: rumor.pop (a small world, k = 10) with 1,000,000 agents for 3 days.

Runs `populace run examples/rumor.pop --set people=N --set days=3` in a fresh process (Ray
start-up included) and prints wall time, run time (summary.json), agent-steps per second, the
peak memory of all our processes together (sum of proportional set sizes from /proc, sampled
every 0.25 s; Linux only), that peak per agent, and the adjacency's own size (8 bytes of offset
per agent + 4 bytes per stored edge end, measured by building the graph in this process).

    python benchmarks/rumor.py [--sizes 1000000] [--executor ray|local] [--model spread|offline]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import run_with_peak_memory, scenario_with  # noqa: E402

SCENARIO = ROOT / "examples" / "rumor.pop"


def scenario_with_model(model: str) -> Path:
    return scenario_with(SCENARIO, "model = spread", f"model = {model}", "populace-rumor-")


def measure(size: int, days: int, executor: str, scenario: Path) -> dict:
    run_dir = tempfile.mkdtemp(prefix=f"populace-rumor-{size}-")
    cmd = [sys.executable, "-m", "populace.cli", "run", str(scenario), "--set", f"people={size}",
           "--set", f"days={days}", "--executor", executor, "--quiet", "--run-dir", run_dir]
    wall, peak = run_with_peak_memory(cmd, f"{size}")
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    metrics = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {"people": size, "wall_s": wall, "run_s": summary["seconds"], "agent_steps": summary["agent_steps"],
            "steps_per_s": summary["agent_steps"] / summary["seconds"], "peak_bytes": peak,
            "bytes_per_agent": peak / size, "shards": sum(summary["shards"].values()),
            "believers": [m["believers"] for m in metrics]}


def adjacency(size: int) -> tuple[float, int, float]:
    from populace.runtime.environments import network

    began = time.perf_counter()
    offsets, neighbours = network.build("friends", {"generator": {"name": "small_world", "k": 10, "p": 0.1}}, size, 11)
    seconds = time.perf_counter() - began
    return seconds, offsets.nbytes + neighbours.nbytes, len(neighbours)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--executor", default="ray")
    parser.add_argument("--model", default="spread", help="`spread` (the python policy) or `offline` (mock)")
    args = parser.parse_args()
    scenario = scenario_with_model(args.model)
    print(f"rumor.pop, small_world(k = 10, p = 0.1), {args.days} days, model={args.model}, "
          f"executor={args.executor}, {os.cpu_count()} CPUs")
    print(f"{'people':>10} {'wall s':>8} {'run s':>8} {'agent-steps/s':>14} {'peak MiB':>9} {'bytes/agent':>12} "
          f"{'shards':>6} {'graph s':>8} {'graph MiB':>9} {'B/edge':>7}  believers")
    for size in (int(s) for s in args.sizes.split(",")):
        r = measure(size, args.days, args.executor, scenario)
        seconds, nbytes, ends = adjacency(size)
        print(f"{r['people']:>10,} {r['wall_s']:>8.1f} {r['run_s']:>8.1f} {r['steps_per_s']:>14,.0f} "
              f"{r['peak_bytes'] / 2**20:>9,.0f} {r['bytes_per_agent']:>12,.0f} {r['shards']:>6} "
              f"{seconds:>8.1f} {nbytes / 2**20:>9.1f} {nbytes / (ends / 2):>7.1f}  "
              f"{', '.join(f'{b:.3f}' for b in r['believers'])}", flush=True)


if __name__ == "__main__":
    main()
