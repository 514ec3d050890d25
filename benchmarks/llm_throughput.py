"""LLM throughput benchmark: Little's law and client CPU per request, against a fake server.

The fake server (tests/fake_llm.py) runs in its own process on 127.0.0.1 and shares this machine's
2 cores with us: its CPU is measured separately and not counted as ours.

1. Little's law: a fixed 200 ms latency, 20,000 asks, `in_flight` 64. The ideal rate is
   in_flight / latency = 320 requests/s; the achieved rate is requests / the ask step's time.
2. CPU per request: "all ours" is the CPU seconds of every process of the run (the `populace run`
   driver, Ray's daemons and the shard workers, sampled from /proc, start-up included) divided by
   the requests. "bare SDK" is a loop of the same SDK calls at the same concurrency in one process;
   "layer" is Populace's LLM layer (runtime/llm.py: queue, limits, retries, parsing) answering the
   same asks in one process. "overhead" = layer - bare SDK: what Populace adds per request.

    python benchmarks/llm_throughput.py [--asks 20000] [--latency 0.2] [--in-flight 64] [--providers anthropic,openai]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import descendants, cpu_seconds  # noqa: E402

SCENARIO = """
scenario throughput {{
  seed = 1
  param n = {asks}
}}
model llm {{
  provider = {provider}
  name = "{name}"
  max_tokens = 8
  in_flight = {in_flight}
  api_key_env = "BENCH_KEY"
  base_url = "{url}"
}}
agent Guesser {{
  model = llm
}}
population guessers = param.n x Guesser
workflow {{
  ask guessers "Pick a number from 0 to 100." -> pick: int in 0..100
  record mean_pick = mean(guessers.pick)
}}
"""


class FakeServer:
    def __init__(self, latency: float):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm.py"), "--port", "0",
                                      "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not match:
            raise SystemExit(f"fake server did not start: {line!r}")
        self.url = match.group(0)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run_populace(provider: str, url: str, asks: int, in_flight: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="populace-llm-"))
    scenario = tmp / "throughput.pop"
    base = url if provider == "anthropic" else url + "/v1"
    scenario.write_text(SCENARIO.format(asks=asks, provider=provider, in_flight=in_flight, url=base,
                                        name="claude-haiku-4-5" if provider == "anthropic" else "llama-3-8b"))
    cmd = [sys.executable, "-m", "populace.cli", "run", str(scenario), "--quiet", "--run-dir", str(tmp / "run")]
    env = dict(os.environ, BENCH_KEY="bench", RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seen: dict[int, float] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for p in descendants(proc.pid):
                seen[p] = max(seen.get(p, 0.0), cpu_seconds(p))
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"populace run failed: {err.decode()[-2000:]}")
    events = [json.loads(x) for x in (tmp / "run" / "events.jsonl").read_text().splitlines()]
    step = next(e for e in events if e["type"] == "step_finished" and e["step"] == "step:ask.pick")
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    # Ray's daemons (gcs, raylet, dashboard agent) idle along; they are ours too, so they count.
    return {"requests": summary["calls"], "errors": summary["errors"], "step_s": step["seconds"],
            "cpu_s": sum(seen.values()), "wall_s": summary["seconds"]}


async def bare_loop(provider: str, url: str, n: int, concurrency: int) -> float:
    """The same calls with the stock SDK and nothing else: CPU seconds per request of this process."""
    if provider == "anthropic":
        import anthropic

        client = anthropic.AsyncAnthropic(base_url=url, api_key="bench", max_retries=0)

        async def call():
            r = await client.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                             messages=[{"role": "user", "content": "Pick a number from 0 to 100."}])
            return r.content[0].text
    else:
        import openai

        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0)

        async def call():
            r = await client.chat.completions.create(model="llama-3-8b", max_tokens=8,
                                                     messages=[{"role": "user", "content": "Pick a number from 0 to 100."}])
            return r.choices[0].message.content

    queue = list(range(n))

    async def worker():
        while queue:
            queue.pop()
            await call()

    began = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    used = time.process_time() - began
    await client.close()
    return used / n


def in_process(provider: str, url: str, n: int, concurrency: int) -> float:
    """Populace's LLM layer alone (no Ray, no driver), warmed up: CPU ms per request."""
    import numpy as np

    from populace.runtime.models.llm import LLMModel
    from populace.runtime.models.base import AskBatch

    os.environ["BENCH_KEY"] = "bench"
    settings = {"name": "claude-haiku-4-5" if provider == "anthropic" else "llama-3-8b", "api_key_env": "BENCH_KEY",
                "base_url": url if provider == "anthropic" else url + "/v1", "max_tokens": 8}
    model = LLMModel({"name": "llm", "provider": provider, "settings": settings, "limits": {"in_flight": concurrency}},
                     0, 1, None, False)

    def batch(k):
        return AskBatch(ids=np.arange(k), prompt="Pick a number from 0 to 100.", system=None,
                        memory_chars=np.zeros(k, dtype=np.int64), output={"kind": "int", "min": 0, "max": 100},
                        where="bench", seed=1)

    model.ask(batch(200))  # imports and first connections are not per-request costs
    began = time.process_time()
    answers = model.ask(batch(n))
    assert not any(answers.errors), answers.errors[:3]
    return (time.process_time() - began) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--asks", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--providers", default="anthropic,openai")
    parser.add_argument("--bare", type=int, default=4000, help="requests in the bare SDK loop")
    args = parser.parse_args()
    ideal = args.in_flight / args.latency
    print(f"fake server on 127.0.0.1 in its own process (shares the {os.cpu_count()} cores); latency "
          f"{args.latency * 1000:.0f} ms, in_flight {args.in_flight}, ideal {ideal:.0f} requests/s")
    print(f"{'provider':>10} {'asks':>7} {'step s':>7} {'req/s':>7} {'of ideal':>8} {'all ours ms/req':>15} "
          f"{'bare SDK ms/req':>15} {'layer ms/req':>12} {'overhead ms/req':>15} {'server ms/req':>13}")
    for provider in args.providers.split(","):
        server = FakeServer(args.latency)
        try:
            before = server.cpu()
            r = run_populace(provider, server.url, args.asks, args.in_flight)
            server_ms = (server.cpu() - before) / max(1, r["requests"]) * 1000
            asyncio.run(bare_loop(provider, server.url, 200, args.in_flight))  # warm-up: imports, connections
            bare = asyncio.run(bare_loop(provider, server.url, args.bare, args.in_flight)) * 1000
            layer = in_process(provider, server.url, args.bare, args.in_flight) * 1000
        finally:
            server.stop()
        rate = r["requests"] / r["step_s"]
        ours = r["cpu_s"] / r["requests"] * 1000
        print(f"{provider:>10} {r['requests']:>7,} {r['step_s']:>7.1f} {rate:>7.0f} {rate / ideal:>8.1%} {ours:>15.2f} "
              f"{bare:>15.2f} {layer:>12.2f} {layer - bare:>15.2f} {server_ms:>13.2f}", flush=True)
        if r["errors"]:
            print(f"  {r['errors']} agent errors")


if __name__ == "__main__":
    main()
