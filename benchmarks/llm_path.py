"""The LLM path end to end on the seed paper's game, against a fast fake server (issue 17).

Workload: guess 2/3 of the average, N agents, 3 rounds, each agent remembering the earlier rounds
(`memory = last 4`), every call to the fake server of tests/fake_llm.py in its own process on
127.0.0.1 answering after 100 ms, `in_flight = 256`. The ideal is in_flight / latency = 2,560
replies/s. For each provider, transport (`lean`: runtime/models/wire.py; `sdk`: the SDK's own
client; `batch`: the provider's batch API, batches.py, where the fake server ends a batch 0.2 s after
it was created, so its replies/s say nothing and its client CPU a call is the figure) and executor,
`populace run` runs in a fresh process and we report:

- replies/s over the three ask steps (their step_finished seconds), and the share of the ideal;
- client CPU ms per call: the CPU of every process of the run (driver, Ray's daemons and shard
  workers, start-up and compile included), sampled from /proc, over the calls; the fake server's
  own CPU is reported apart and not counted.

    python benchmarks/llm_path.py [--sizes 1000,10000] [--providers openai,anthropic]
                                  [--transports lean,sdk,batch] [--executors local,local:2,ray]
                                  [--in-flight 256]

`local` is the local executor as `populace run` chooses its worker processes (none below 20,000
agents); `local:W` sets W of them (`--workers W`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_throughput import FakeServer  # noqa: E402
from procstat import cpu_seconds, descendants  # noqa: E402

SCENARIO = '''
scenario llm_path {{
  seed = 1
  param n = {n}
}}
model llm {{
  provider = {provider}
  name = "{name}"
  max_tokens = 8
  in_flight = {in_flight}
  api_key_env = "BENCH_KEY"
  base_url = "{url}"
  {transport}
}}
agent Player {{
  model = llm
  memory = last 4
  system = "You are playing a multiplayer game. Each player reports a number between 0 and 100; the winner is closest to 2/3 of the average."
}}
population players = param.n x Player
environment game {{
  winners: list[float] = []
}}
workflow {{
  repeat 3 as round {{
    ask players """{{{{ "" if round == 1 else "The winning number of the last round was " + join(last(game.winners)) + ". " }}}}Report your number.""" -> guess: int in 0..100
    game.winners += round(mean(players.guess) * 2 / 3, 2)
    record round, mean_guess = mean(players.guess)
  }}
}}
'''


def run_once(provider: str, transport: str, executor: str, n: int, url: str, in_flight: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="populace-path-"))
    scenario = tmp / "path.pop"
    how = "batch = true" if transport == "batch" else f'transport = "{transport}"'
    scenario.write_text(SCENARIO.format(n=n, provider=provider, transport=how, in_flight=in_flight,
                                        url=url if provider == "anthropic" else url + "/v1",
                                        name="claude-haiku-4-5" if provider == "anthropic" else "llama-3-8b"))
    kind, _, workers = executor.partition(":")  # local:2 = the local executor with 2 worker processes
    cmd = [sys.executable, "-m", "populace.cli", "run", str(scenario), "--quiet", "--run-dir", str(tmp / "run"),
           "--executor", kind] + (["--workers", workers] if workers else [])
    env = dict(os.environ, BENCH_KEY="bench", RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seen: dict[int, float] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for p in descendants(proc.pid):
                seen[p] = max(seen.get(p, 0.0), cpu_seconds(p))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"populace run failed: {err.decode()[-2000:]}")
    events = [json.loads(x) for x in (tmp / "run" / "events.jsonl").read_text().splitlines()]
    asks = [e["seconds"] for e in events if e["type"] == "step_finished" and e.get("op") == "ask"]
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    return {"calls": summary["calls"], "errors": summary["errors"], "ask_s": sum(asks),
            "cpu_s": sum(seen.values()), "wall_s": summary["seconds"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--providers", default="openai,anthropic")
    parser.add_argument("--transports", default="lean,sdk")
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args(argv)
    ideal = args.in_flight / args.latency
    print(f"guess 2/3, 3 rounds, memory; in_flight {args.in_flight}, latency {args.latency * 1000:.0f} ms: "
          f"ideal {ideal:,.0f} replies/s")
    print("| N | provider | transport | executor | ask s (3 rounds) | replies/s | of ideal | client CPU ms/call "
          "| fake server CPU ms/call | run s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    server = FakeServer(args.latency)
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            for provider in args.providers.split(","):
                for transport in args.transports.split(","):
                    for executor in args.executors.split(","):
                        before = server.cpu()
                        r = run_once(provider, transport, executor, n, server.url, args.in_flight)
                        fake = (server.cpu() - before) / max(r["calls"], 1) * 1000
                        rate = r["calls"] / r["ask_s"] if r["ask_s"] else 0.0
                        print(f"| {n:,} | {provider} | {transport} | {executor} | {r['ask_s']:.2f} | {rate:,.0f} | "
                              f"{rate / ideal:.0%} | {r['cpu_s'] / max(r['calls'], 1) * 1000:.2f} | {fake:.2f} | "
                              f"{r['wall_s']:.1f} |" + (f" {r['errors']} errors" if r["errors"] else ""), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
