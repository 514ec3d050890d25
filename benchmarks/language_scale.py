"""The classic-model constructs at a million agents: each stays vectorised (no per-agent Python loop).

One scenario, N agents (1,000,000 by default) in two kinds, 3 rounds of: `regroup pairs` and a
pair aggregate, a filtered aggregate in a record, `record ... by players.kind`, a neighbours-vs-self
share on a grid with one agent per cell, and `move_to_empty` for the unhappy. Prints each step's
seconds per round (from the run's events), on the executor given.

    python benchmarks/language_scale.py [--agents 1000000] [--executor local|ray] [--shards 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SCENARIO = """
scenario scale {{
  seed = 7
}}
model rules {{
  provider = mock
}}
agent Red {{
  model = rules
  state cooperate: bool = random() < 0.5
  state payoff: float = 0
  state similar: float = 0
}}
agent Blue {{
  model = rules
  state cooperate: bool = random() < 0.5
  state payoff: float = 0
  state similar: float = 0
}}
population players = {agents} x {{ Red: 50%, Blue: 50% }}
group players by 2 as pairs
environment town : grid(players, width = {side}, height = {side}, occupancy = "one")
workflow {{
  repeat 3 as round {{
    regroup pairs
    players.payoff = 3 * players.cooperate * (sum(pairs.cooperate) - players.cooperate)
    record round, m = mean(players.payoff where players.cooperate), n = count(players where players.payoff > 1)
    record "kinds" round, m = mean(players.payoff) by players.kind
    players.similar = share(neighbors(town).kind == self.kind)
    town.move_to_empty(players where players.similar < 0.3)
  }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=1_000_000)
    parser.add_argument("--executor", default="local")
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine.run import run_plan

    side = math.ceil(math.sqrt(args.agents / 0.9))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.pop"
        path.write_text(SCENARIO.format(agents=args.agents, side=side))
        plan = plan_from_dict(compile_file(str(path)).plan)
        began = time.monotonic()
        run_plan(plan, executor=args.executor, shards=args.shards, run_dir=str(Path(tmp) / "run"))
        total = time.monotonic() - began
        events = [json.loads(x) for x in (Path(tmp) / "run" / "events.jsonl").read_text().splitlines()]
    steps = defaultdict(list)
    started = {}
    for e in events:
        key = (e.get("step"), e.get("iteration"))
        if e["type"] == "step_started":
            started[key] = e.get("t") or e.get("time")
        if e["type"] == "step_finished" and "seconds" in e:
            steps[e["step"]].append(e["seconds"])
    print(f"{args.agents:,} agents, grid {side} x {side}, {args.executor} with {args.shards} shards: "
          f"whole run {total:.1f} s (start-up included)")
    for step, seconds in steps.items():
        print(f"  {step:32} {' '.join(f'{s:6.2f}' for s in seconds)} s per round")


if __name__ == "__main__":
    main()
