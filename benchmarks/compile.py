"""Compile speed and plan size of the flagship scenario, small and huge.

In: an optional number of runs (default 7). Out: for examples/guess_two_thirds.pop with 10 players x
3 rounds and with 1,000,000 players x 1,000 rounds (via --set): the median seconds of the whole
compile (parse included, as `populace compile` does it) and the plan size in canonical bytes.
The two sizes differ only by digits: loops stay loops and agents are not listed in the plan.
Run: python benchmarks/compile.py [RUNS]
"""
from __future__ import annotations

import statistics
import sys
import time

from populace.compiler import compile_file

FLAGSHIP = "examples/guess_two_thirds.pop"
CASES = (("10 players x 3 rounds", ["players=10", "rounds=3"]),
         ("1,000,000 players x 1,000 rounds", ["players=1000000", "rounds=1000"]))


def measure(overrides: list[str], runs: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        compiled = compile_file(FLAGSHIP, overrides)
        times.append(time.perf_counter() - start)
        size = len(compiled.data)
    return statistics.median(times), size


def main(argv: list[str]) -> int:
    runs = int(argv[0]) if argv else 7
    compile_file(FLAGSHIP)  # warm up: the grammar and the schemas load once per process
    print(f"{'scenario':<34} {'median ms':>10} {'plan bytes':>11}   ({runs} runs each, {FLAGSHIP})")
    for label, overrides in CASES:
        seconds, size = measure(overrides, runs)
        print(f"{label:<34} {seconds * 1000:>10.1f} {size:>11,}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
