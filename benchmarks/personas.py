"""Persona sampling benchmark: 1,000,000 personas of 10 fields in one process, no simulation.

The persona has a weighted choice, a normal with clamp and rounding, a uniform_int, a beta, a
bernoulli, a by(occupation) income, two derived fields (a number and a category) and a
background written by the mock model once per (age_group, occupation). The time is
runtime.personas.sample for agents [0, N) after compiling (compile time not counted); best of
--repeat runs. The target is under 10 s for 1,000,000 on 2 cores.

    python benchmarks/personas.py [--agents 1000000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIO = """
scenario persona_bench {
  seed = 7
  param n = 1000
}
model writer {
  provider = mock
}
persona person {
  age        ~ normal(40, 12, clamp = [18, 90], round = 0)
  occupation ~ choice("teacher": 3, "nurse": 2, "engineer": 2, "farmer": 1, "artist": 1)
  children   ~ poisson(1.4)
  optimism   ~ beta(2, 3)
  renter     ~ bernoulli(0.35)
  years      ~ uniform_int(0, 40)
  income     ~ by(occupation) {
    "teacher": normal(45000, 5000)
    "nurse": lognormal(10.8, 0.2)
    "engineer": normal(70000, 12000, clamp = [30000, 200000])
    else: uniform(15000, 60000)
  }
  age_group  = "young" if age < 30 else ("middle" if age < 60 else "older")
  per_child  = income / (children + 1)
  background ~ write(writer, "A {{ age_group }} {{ occupation }}.") reuse per (age_group, occupation)
}
agent Person {
  persona = person
  model = writer
  system = "You are {{ persona.age }}."
}
population people = param.n x Person
workflow {
  ask people "Hello?" -> reply: str
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from populace.compiler import compile_file
    from populace.runtime.personas import sampling as personas
    from populace.runtime.models.base import make_model

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.pop")
        Path(path).write_text(SCENARIO)
        plan = compile_file(path, [f"n={args.agents}"]).plan
    persona = plan["personas"]["person"]
    fields = [f["name"] for f in persona["fields"]]
    seed = plan["scenario"]["seed"]
    models = {name: make_model(model) for name, model in plan["models"].items()}

    def write(model: str, prompts: list[str]) -> list[str]:
        return models[model].write(prompts, seed)

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        columns = personas.sample(persona, 0, args.agents, seed, write)
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"{args.agents:,} personas, {len(fields)} fields ({', '.join(fields)})")
    print(f"sample: best {best:.2f} s of {args.repeat} ({', '.join(f'{t:.2f}' for t in times)}); "
          f"{args.agents / best:,.0f} personas/s; columns {sum(c.nbytes for c in columns.values()) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
