"""Run events and the run state folded from them: the single source of truth for progress.

In: event dicts (`{"type": "step_finished", "t": 1.23, ...}`) as the driver emits them or as
read back from events.jsonl. Out: RunState.from_events(...), what the CLI and the monitor show:
status, current step and iteration, agents done, model calls, tokens, errors, records. Events
written by a newer Populace (a `run_started` with a higher `format`) are refused, not guessed at.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .rundir import check_format


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
    by_model: dict = field(default_factory=dict)  # model -> {"calls", "tokens_in", "tokens_out"}, and with
    # `models` events also "retries", "failures", "latency_p50_s", "latency_p95_s", "cost_usd", ...
    in_flight: dict = field(default_factory=dict)  # model -> requests out now (sampled while an ask runs)
    shard_info: dict = field(default_factory=dict)  # population -> [{"node", "ip", "host", "agents", "bytes", "rss"}]
    restarts: list = field(default_factory=list)  # shard_restarted events: a dead shard brought back
    seconds: float = 0.0
    failure: str = ""

    def apply(self, e: dict) -> None:
        """Fold one event. A damaged event (a field missing or of the wrong type) adds what it holds
        and never raises; an event stream written by a newer Populace raises NewerFormatError."""
        kind = e.get("type")
        self.seconds = max(self.seconds, _number(e, "t"))
        if kind == "run_started":
            check_format(e.get("format"), "events.jsonl", e.get("populace_version"))
            self.status = "running"
            self.scenario, self.plan_hash, self.executor = _text(e, "scenario"), _text(e, "plan_hash"), _text(e, "executor")
            self.shards, self.agents = _mapping(e, "shards"), _mapping(e, "agents")
        elif kind == "step_started":
            self.current = _text(e, "step") + _text(e, "iteration")
            self.step_total = _number(e, "agents")
            self.step_done = 0
        elif kind == "shard_finished":
            self.step_done = _number(e, "agents_done")
            self.step_total = _number(e, "agents_total")
            self.shards_done[f"{_text(e, 'population')}/{e.get('shard')}"] = self.step_done
        elif kind == "step_finished":
            self.steps_done += 1
            self.agents_done += _number(e, "agents")
            self.calls += _number(e, "calls")
            self.tokens_in += _number(e, "tokens_in")
            self.tokens_out += _number(e, "tokens_out")
            self.errors += _number(e, "errors")
            for model, counts in _mapping(e, "by_model").items():
                if not (isinstance(counts, list) and len(counts) == 3 and all(_is_number(c) for c in counts)):
                    continue
                m = self.by_model.setdefault(model, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
                m["calls"] += counts[0]
                m["tokens_in"] += counts[1]
                m["tokens_out"] += counts[2]
        elif kind == "agent_errors":
            room = 50 - len(self.error_samples)
            samples = e.get("samples") if isinstance(e.get("samples"), list) else []
            if room > 0:
                self.error_samples.extend(dict(s, step=_text(e, "step"), iteration=_text(e, "iteration"),
                                               span=e.get("span"))
                                          for s in samples[:room] if isinstance(s, dict))
        elif kind == "record":
            if isinstance(e.get("values"), dict):
                self.records.append(e["values"])
        elif kind == "models":  # each model's run totals so far: they replace what step_finished added
            models = e.get("models")
            if isinstance(models, dict):
                # step_finished adds to these three: a damaged event's missing or odd counts start at 0
                self.by_model = {name: dict(m, **{k: _number(m, k) for k in ("calls", "tokens_in", "tokens_out")})
                                 for name, m in models.items() if isinstance(m, dict)}
        elif kind == "calls_in_flight":
            models = e.get("models")
            self.in_flight = dict(models) if isinstance(models, dict) else {}
        elif kind == "shards":
            shards = e.get("shards")
            if isinstance(shards, list) and isinstance(e.get("population"), str):
                self.shard_info[e["population"]] = [s for s in shards if isinstance(s, dict)]
        elif kind == "shard_restarted":
            self.restarts.append(e)
        elif kind == "run_paused":
            self.status = "paused"
        elif kind == "run_resumed":
            self.status = "running"
        elif kind == "run_finished":
            status = e.get("status")
            self.status = status if status in ("finished", "stopped", "failed") else "finished"
            self.current = ""
        elif kind == "run_failed":
            self.status = "failed"
            self.failure = _text(e, "error")
        if kind in ("step_finished", "run_finished", "run_failed"):
            self.in_flight = {}  # nothing is out between steps

    @classmethod
    def from_events(cls, events) -> "RunState":
        state = cls()
        for e in events:
            state.apply(e)
        return state


def read_events(path: str) -> list[dict]:
    """Events of a run directory. A torn last line (a crash mid-write) and a damaged line (not a JSON
    object with a `type`) are skipped, not fatal; events written by a newer Populace raise
    NewerFormatError (rundir), naming the file and both versions."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                event = json.loads(line)
            except ValueError:  # JSONDecodeError; also numbers too large to read back
                continue
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                continue
            if event["type"] == "run_started":
                check_format(event.get("format"), path, event.get("populace_version"))
            out.append(event)
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(e: dict, key: str):
    value = e.get(key, 0)
    return value if _is_number(value) else 0


def _text(e: dict, key: str) -> str:
    value = e.get(key, "")
    return value if isinstance(value, str) else ""


def _mapping(e: dict, key: str) -> dict:
    """population -> a count (shards, agents): entries that are not whole numbers >= 0 are left out."""
    value = e.get(key)
    if not isinstance(value, dict):
        return {}
    return {k: n for k, n in value.items() if isinstance(n, int) and not isinstance(n, bool) and n >= 0}
