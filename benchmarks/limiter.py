"""The cluster-wide in_flight limit with shards of uneven work: a pool of permits versus a static split.

Workload: N agents in S shards of equal size, but only the first half of the agents is asked
(`ask voters where self.id < N/2`), so half the shards have all the work. Every call goes to the
fake OpenAI-compatible server (tests/fake_llm.py, in this process) that answers after LATENCY
seconds. The ideal ask time is (N/2) / in_flight x LATENCY. "static" gives every shard in_flight/S
(the split before runtime/models/leases.py); "pool" is what Populace does now.

    python benchmarks/limiter.py [--agents 2000] [--shards 4] [--in-flight 64] [--latency 0.1] [--executor ray]

Prints, per mode: the ask step's seconds, the share of the ideal, and the peak calls in flight
the server saw.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SCENARIO = """
scenario uneven {{
  seed = 1
}}
model llm {{
  provider = openai
  name = "fake"
  base_url = "{url}"
  api_key_env = "FAKE_KEY"
  in_flight = {in_flight}
  max_tokens = 8
}}
agent Voter {{
  model = llm
}}
population voters = {agents} x Voter
workflow {{
  ask voters where self.id < {half} "Agent {{{{ self.id }}}}: pick a number." -> pick: int in 0..100
}}
"""


def one(mode: str, args) -> dict:
    from fake_llm import FakeLLM
    from populace.compiler import compile_file
    from populace.compiler.plan import plan_from_dict
    from populace.runtime.engine import executors
    from populace.runtime.engine.run import run_plan

    real = executors.make_pools
    if mode == "static":
        executors.make_pools = lambda plan, ray=None: {}
    try:
        with FakeLLM(latency=args.latency) as fake, tempfile.TemporaryDirectory() as tmp:
            os.environ["FAKE_KEY"] = "k"
            path = Path(tmp) / "uneven.pop"
            path.write_text(SCENARIO.format(url=fake.openai_url, in_flight=args.in_flight, agents=args.agents,
                                            half=args.agents // 2))
            plan = plan_from_dict(compile_file(str(path)).plan)
            run_plan(plan, executor=args.executor, shards=args.shards, run_dir=str(Path(tmp) / "run"))
            events = [json.loads(x) for x in (Path(tmp) / "run" / "events.jsonl").read_text().splitlines()]
            seconds = next(e["seconds"] for e in events if e["type"] == "step_finished" and e.get("op") == "ask")
            peak = fake.peak_in_flight
    finally:
        executors.make_pools = real
    ideal = (args.agents // 2) / args.in_flight * args.latency
    return {"mode": mode, "seconds": seconds, "share_of_ideal": ideal / seconds, "peak_in_flight": peak, "ideal": ideal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--executor", default="ray")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.executor == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "tests")}})
    print(f"{args.agents:,} agents in {args.shards} shards, the first half asked; in_flight {args.in_flight}, "
          f"latency {args.latency * 1000:.0f} ms, {args.executor}")
    for mode in ("static", "pool"):
        r = one(mode, args)
        print(f"  {mode:6}  ask {r['seconds']:.2f} s (ideal {r['ideal']:.2f} s): {r['share_of_ideal']:.0%} of the ideal, "
              f"peak {r['peak_in_flight']} calls in flight")


if __name__ == "__main__":
    main()
