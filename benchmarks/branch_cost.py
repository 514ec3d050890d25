"""What an intervention costs: `populace branch` against a fresh run of the changed scenario.

Workload: N citizens, R rounds, each asked every round how much they work under a tax that the
prompt states (an LLM on the fake OpenAI server of tests/fake_llm.py, 2 ms a call), with memory of
the last two rounds. The parent runs with tax 0.1 and `--keep-checkpoints all`. The intervention:
tax 0.3 from round B on, as `populace branch PARENT --at round=B --set tax=0.3`, against the only
way without branching, a fresh run with tax 0.3 (which also changes rounds 1 to B-1, so it is not
even the same experiment). We report the calls each made (the fake server's count) and the wall time.

    python benchmarks/branch_cost.py [--agents 1000] [--rounds 10] [--at 6]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fake_llm import FakeLLM  # noqa: E402

SCENARIO = (ROOT / "tests" / "test_branch.py").read_text().split('SCENARIO = """', 1)[1].split('"""', 1)[0]


def timed(argv: list[str]) -> float:
    from populace.cli.main import main

    began = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"populace {' '.join(argv)} failed ({code})")
    return time.monotonic() - began


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--at", type=int, default=6)
    args = parser.parse_args(argv)
    os.environ["BRANCH_KEY"] = "bench"
    tmp = Path(tempfile.mkdtemp(prefix="populace-branch-"))
    with FakeLLM(latency=0.002) as fake:
        scenario = tmp / "taxed.pop"
        scenario.write_text(SCENARIO.format(n=args.agents, rounds=args.rounds, url=fake.openai_url))
        parent_s = timed(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(tmp / "parent"),
                          "--keep-checkpoints", "all"])
        parent_calls = fake.requests
        branch_s = timed(["branch", str(tmp / "parent"), "--at", f"round={args.at}", "--set", "tax=0.3",
                          "--run-dir", str(tmp / "branch"), "--quiet"])
        branch_calls = fake.requests - parent_calls
        fresh_s = timed(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(tmp / "fresh"),
                         "--set", "tax=0.3"])
        fresh_calls = fake.requests - parent_calls - branch_calls
    disk = sum(f.stat().st_size for f in (tmp / "parent" / "checkpoints").rglob("*") if f.is_file())
    print(f"{args.agents:,} agents, {args.rounds} rounds, branch at round {args.at} (tax 0.1 -> 0.3)")
    print("| run | calls made | of a fresh run | wall s |")
    print("|---|---|---|---|")
    print(f"| parent (tax 0.1, --keep-checkpoints all) | {parent_calls:,} | - | {parent_s:.1f} |")
    print(f"| branch --at round={args.at} --set tax=0.3 | {branch_calls:,} | {branch_calls / fresh_calls:.0%} | {branch_s:.1f} |")
    print(f"| fresh run, tax 0.3 | {fresh_calls:,} | 100% | {fresh_s:.1f} |")
    print(f"the parent's {len(list((tmp / 'parent' / 'checkpoints').iterdir()))} checkpoints take {disk / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
