"""Scale benchmark: the flagship scenario on Ray for 10k, 100k and 1M players x 3 rounds.

Runs `populace run examples/guess_two_thirds.pop --set players=N` in a fresh process per size
(Ray start-up included) and prints: wall time end to end, run time (from summary.json),
agent-steps per second, the peak memory of all our processes together (the driver, Ray's
daemons and the shard workers: the sum of their proportional set sizes, sampled every 0.25 s
from /proc, Linux only) and that peak divided by the number of agents.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--executor ray|local|local:W]
                               [--model writer|level_k]

`local:W` is the local executor with W worker processes (`--workers W`; `local:0`: all shards in
the driver's process).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import run_with_peak_memory, scenario_with  # noqa: E402


def scenario_with_model(model: str | None) -> Path:
    """The flagship, with the agent's model swapped (e.g. `writer`, its mock model)."""
    path = ROOT / "examples" / "guess_two_thirds.pop"
    if not model:
        return path
    return scenario_with(path, "model   = level_k", f"model   = {model}", "populace-scale-")


def measure(size: int, executor: str, extra: list[str], scenario: Path) -> dict:
    run_dir = tempfile.mkdtemp(prefix=f"populace-scale-{size}-")
    kind, _, workers = executor.partition(":")  # local:2 = the local executor with 2 worker processes
    cmd = [sys.executable, "-m", "populace.cli", "run", str(scenario), "--set", f"players={size}",
           "--executor", kind, "--quiet", "--run-dir", run_dir, *(["--workers", workers] if workers else []), *extra]
    wall, peak = run_with_peak_memory(cmd, f"{size}")
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {"players": size, "wall_s": wall, "run_s": summary["seconds"], "agent_steps": summary["agent_steps"],
            "steps_per_s": summary["agent_steps"] / summary["seconds"], "peak_bytes": peak,
            "bytes_per_agent": peak / size, "shards": sum(summary["shards"].values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--executor", default="ray")
    parser.add_argument("--model", default=None,
                        help="the agent's model: `writer` (the flagship's mock model) or `level_k` (default)")
    args = parser.parse_args()
    extra: list[str] = []
    scenario = scenario_with_model(args.model)
    print(f"flagship scenario, 3 rounds, model={args.model or 'level_k'}, executor={args.executor}, {os.cpu_count()} CPUs")
    print(f"{'players':>10} {'wall s':>8} {'run s':>8} {'agent-steps/s':>14} {'peak MiB':>9} {'bytes/agent':>12} {'shards':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        r = measure(size, args.executor, extra, scenario)
        print(f"{r['players']:>10,} {r['wall_s']:>8.1f} {r['run_s']:>8.1f} {r['steps_per_s']:>14,.0f} "
              f"{r['peak_bytes'] / 2**20:>9,.0f} {r['bytes_per_agent']:>12,.0f} {r['shards']:>6}", flush=True)


if __name__ == "__main__":
    main()
