"""Run events and the run state folded from them: the single source of truth for progress.

In: event dicts (`{"type": "step_finished", "t": 1.23, ...}`) as the driver emits them or as
read back from events.jsonl. Out: RunState.from_events(...), what the CLI and the monitor show:
status, current step and iteration, agents done, model calls, tokens, errors, records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class RunState:
    status: str = "pending"  # pending | running | paused | finished | stopped | failed
    scenario: str = ""
    plan_hash: str = ""
    executor: str = ""
    shards: dict = field(default_factory=dict)  # population -> shard count
    agents: dict = field(default_factory=dict)  # population -> size
    current: str = ""  # step id and iteration now running
    step_done: int = 0  # agents of the current step whose shard has finished
    step_total: int = 0
    shards_done: dict = field(default_factory=dict)
    steps_done: int = 0
    agents_done: int = 0
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    errors: int = 0
    error_samples: list = field(default_factory=list)
    records: list = field(default_factory=list)
    by_model: dict = field(default_factory=dict)  # model -> {"calls", "tokens_in", "tokens_out"}
    seconds: float = 0.0
    failure: str = ""

    def apply(self, e: dict) -> None:
        kind = e["type"]
        self.seconds = max(self.seconds, e.get("t", 0.0))
        if kind == "run_started":
            self.status = "running"
            self.scenario, self.plan_hash, self.executor = e["scenario"], e["plan_hash"], e["executor"]
            self.shards, self.agents = e["shards"], e["agents"]
        elif kind == "step_started":
            self.current = e["step"] + e.get("iteration", "")
            self.step_total = e.get("agents", 0)
            self.step_done = 0
        elif kind == "shard_finished":
            self.step_done = e["agents_done"]
            self.step_total = e["agents_total"]
            self.shards_done[f"{e['population']}/{e['shard']}"] = e["agents_done"]
        elif kind == "step_finished":
            self.steps_done += 1
            self.agents_done += e.get("agents", 0)
            self.calls += e.get("calls", 0)
            self.tokens_in += e.get("tokens_in", 0)
            self.tokens_out += e.get("tokens_out", 0)
            self.errors += e.get("errors", 0)
            for model, (calls, tin, tout) in e.get("by_model", {}).items():
                m = self.by_model.setdefault(model, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
                m["calls"] += calls
                m["tokens_in"] += tin
                m["tokens_out"] += tout
        elif kind == "agent_errors":
            room = 50 - len(self.error_samples)
            if room > 0:
                self.error_samples.extend(dict(s, step=e["step"], iteration=e.get("iteration", ""), span=e.get("span"))
                                          for s in e["samples"][:room])
        elif kind == "record":
            self.records.append(e["values"])
        elif kind == "run_paused":
            self.status = "paused"
        elif kind == "run_resumed":
            self.status = "running"
        elif kind == "run_finished":
            self.status = e.get("status", "finished")
            self.current = ""
        elif kind == "run_failed":
            self.status = "failed"
            self.failure = e.get("error", "")

    @classmethod
    def from_events(cls, events) -> "RunState":
        state = cls()
        for e in events:
            state.apply(e)
        return state


def read_events(path: str) -> list[dict]:
    """Events of a run directory; a torn last line (a crash mid-write) is skipped, not fatal."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
