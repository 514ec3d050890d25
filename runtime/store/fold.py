"""The run state, a pure fold over the run's events: the one account of a run.

In: event dicts (`{"type": "step_finished", "t": 1.23, ...}`) as the driver emits them or as read
back from events.jsonl. Out: RunState: status, current step, agents done, model calls, tokens,
retries, failures, latency, cost, errors, records. The driver keeps its totals by folding its own
events, so summary.json, the CLI's live panel, `populace status` and the monitor all read the same
numbers. A resumed run's events hold the steps done after the checkpoint twice (once before the
crash, once again after the resume): `run_started` with `resumed_from` rolls the fold back to
what it was at that checkpoint, so a resumed run counts like an uninterrupted one.
Events written by a newer Populace (a `run_started` with a higher `format`) are refused.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

from populace.runtime.models.budget import priced_usd

from . import latency

from .rundir import check_format

COUNTED = ("calls", "tokens_in", "tokens_out")  # per model, from step_finished's by_model
LLM_COUNTS = ("retries", "reasks", "cache_hits", "failures", "cache_read", "cache_write")
MAX_ERROR_SAMPLES = 50
MAX_SNAPSHOTS = 16  # checkpoints a later resume may roll back to (a damaged newest falls back to older ones)


@dataclass
class RunState:
    status: str = "pending"  # pending | running | paused | finished | stopped | failed
    scenario: str = ""
    plan_hash: str = ""
    executor: str = ""
    shards: dict = field(default_factory=dict)  # population -> shard count
    agents: dict = field(default_factory=dict)  # population -> size
    prices: dict = field(default_factory=dict)  # model -> {"provider", "price"} (run_started): the cost here
    current: str = ""  # step id and iteration now running
    step_done: int = 0  # agents of the current step whose shard has finished
    step_total: int = 0
    shards_done: dict = field(default_factory=dict)
    steps_done: int = 0
    agents_done: int = 0
    agent_seconds: float = 0.0  # seconds spent in agent steps (agents_done / agent_seconds: agents per second)
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    errors: int = 0  # answers that failed (after retries and re-asks)
    answers: int = 0  # answers asked for (agents of every ask)
    error_samples: list = field(default_factory=list)
    records: list = field(default_factory=list)
    by_model: dict = field(default_factory=dict)  # model -> calls, tokens_in, tokens_out, retries, reasks,
    # cache_hits, failures, cache_read, cache_write, latency_p50_s, latency_p95_s, cost_usd
    latencies: dict = field(default_factory=dict)  # model -> latency histogram (models/latency.py)
    in_flight: dict = field(default_factory=dict)  # model -> requests out now (sampled while an ask runs)
    shard_info: dict = field(default_factory=dict)  # population -> [{"node", "ip", "host", "agents", "bytes", "rss"}]
    restarts: list = field(default_factory=list)  # shard_restarted events: a dead shard brought back
    seconds: float = 0.0
    failure: str = ""
    checkpoint_seq: int = 0
    snapshots: dict = field(default_factory=dict)  # checkpoint seq -> what the fold was then
    budget_usd: float | None = None  # the run's hard budget (run_started), if it has one
    stopped_by: str = ""  # "budget" when the budget ended the run

    # ---------------------------------------------------------------- folding
    def apply(self, e: dict) -> None:
        """Fold one event. A damaged event (a field missing or of the wrong type) adds what it holds
        and never raises; an event stream written by a newer Populace raises NewerFormatError."""
        kind = e.get("type")
        self.seconds = max(self.seconds, _number(e, "t"))
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, e)
        if kind in ("step_finished", "run_finished", "run_failed"):
            self.in_flight = {}  # nothing is out between steps

    @classmethod
    def from_events(cls, events) -> "RunState":
        state = cls()
        for e in events:
            state.apply(e)
        return state

    def _run_started(self, e):
        check_format(e.get("format"), "events.jsonl", e.get("populace_version"))
        resumed = e.get("resumed_from")
        if _whole(resumed) and resumed in self.snapshots:
            paid = self._paid()
            self._restore(self.snapshots[resumed])
            self._keep_paid(paid)
        self.status = "running"
        self.stopped_by = ""
        budget = e.get("budget")
        self.budget_usd = float(budget) if _is_number(budget) else None
        self.failure = ""
        self.current = ""
        self.scenario, self.plan_hash, self.executor = _text(e, "scenario"), _text(e, "plan_hash"), _text(e, "executor")
        self.shards, self.agents = _mapping(e, "shards"), _mapping(e, "agents")
        prices = e.get("prices")
        if isinstance(prices, dict):
            self.prices = {k: v for k, v in prices.items() if isinstance(v, dict)}

    def _step_started(self, e):
        self.current = _text(e, "step") + _text(e, "iteration")
        self.step_total = _number(e, "agents")
        self.step_done = 0

    def _shard_finished(self, e):
        self.step_done = _number(e, "agents_done")
        self.step_total = _number(e, "agents_total")
        self.shards_done[f"{_text(e, 'population')}/{e.get('shard')}"] = self.step_done

    def _step_finished(self, e):
        self.steps_done += 1
        self.agents_done += _number(e, "agents")
        if e.get("op") in ("ask", "set_state", "tell", "broadcast", "call"):
            self.agent_seconds += _number(e, "seconds")
        if e.get("op") == "ask":
            self.answers += _number(e, "agents")
        self.errors += _number(e, "errors")
        self._usage(e.get("by_model"), e.get("llm"))

    def _step_interrupted(self, e):
        """A step cut short (the budget ran out): its calls were paid, its agents count when it is redone."""
        self._usage(e.get("by_model"), e.get("llm"))

    def _budget_reached(self, e):
        self.stopped_by = "budget"

    def _personas_written(self, e):
        """Calls and tokens spent writing persona texts before the first step."""
        usage = e.get("usage") if isinstance(e.get("usage"), dict) else {}
        self._usage({m: [_number(c, k) for k in COUNTED] for m, c in usage.items() if isinstance(c, dict)},
                    {m: c for m, c in usage.items() if isinstance(c, dict)})

    def _usage(self, by_model, llm) -> None:
        for model, counts in (by_model if isinstance(by_model, dict) else {}).items():
            if not (isinstance(counts, list) and len(counts) == 3 and all(_is_number(c) for c in counts)):
                continue
            m = self._model(model)
            for k, c in zip(COUNTED, counts):
                m[k] += c
            self.calls += counts[0]
            self.tokens_in += counts[1]
            self.tokens_out += counts[2]
        for model, stats in (llm if isinstance(llm, dict) else {}).items():
            if not isinstance(stats, dict):
                continue
            m = self._model(model)
            for k in LLM_COUNTS:
                m[k] = m.get(k, 0) + _number(stats, k)
            hist = stats.get("latency")
            if isinstance(hist, dict):
                into = self.latencies.setdefault(model, {})
                for b, n in hist.items():
                    if isinstance(b, str) and _whole(n):
                        into[b] = into.get(b, 0) + n
            self._figures(model)
        for model in (by_model if isinstance(by_model, dict) else {}):
            if model in self.by_model:
                self._figures(model)

    def _model(self, name: str) -> dict:
        return self.by_model.setdefault(name, {"calls": 0, "tokens_in": 0, "tokens_out": 0})

    def _figures(self, name: str) -> None:
        """A model's derived figures: latency quantiles and cost (from the run's prices)."""
        m = self.by_model[name]
        m.update(latency.quantiles(self.latencies.get(name, {})))
        if name in self.prices:
            m["cost_usd"] = model_cost(self.prices[name], m)
        read, write = _number(m, "cache_read"), _number(m, "cache_write")
        if read or write:  # the provider's prompt cache: share of input tokens read from it, dollars it saved
            m["prompt_cache_hit_rate"] = round(read / (_number(m, "tokens_in") + read + write), 4)
            saved = prompt_cache_saving(self.prices.get(name, {}), read, write)
            if saved is not None:
                m["prompt_cache_saved_usd"] = round(saved, 6)

    def _agent_errors(self, e):
        room = MAX_ERROR_SAMPLES - len(self.error_samples)
        samples = e.get("samples") if isinstance(e.get("samples"), list) else []
        if room > 0:
            self.error_samples.extend(dict(s, step=_text(e, "step"), iteration=_text(e, "iteration"), span=e.get("span"))
                                      for s in samples[:room] if isinstance(s, dict))

    def _record(self, e):
        if isinstance(e.get("values"), dict):
            self.records.append(dict(e["values"], **({"_table": e["table"]} if isinstance(e.get("table"), str) else {})))

    def _models(self, e):
        """Runs written before step_finished carried `llm`: each model's totals so far, replacing ours."""
        models = e.get("models")
        if isinstance(models, dict):
            self.by_model = {name: dict(m, **{k: _number(m, k) for k in COUNTED})
                             for name, m in models.items() if isinstance(m, dict)}

    def _calls_in_flight(self, e):
        models = e.get("models")
        self.in_flight = dict(models) if isinstance(models, dict) else {}

    def _shards(self, e):
        shards = e.get("shards")
        if isinstance(shards, list) and isinstance(e.get("population"), str):
            self.shard_info[e["population"]] = [s for s in shards if isinstance(s, dict)]

    def _checkpoint(self, e):
        seq = e.get("seq")
        if _whole(seq):
            self.checkpoint_seq = seq
            self.snapshots[seq] = self._snapshot()
            for old in sorted(self.snapshots)[:-MAX_SNAPSHOTS]:
                del self.snapshots[old]

    def _run_finished(self, e):
        status = e.get("status")
        self.status = status if status in ("finished", "stopped", "failed") else "finished"
        self.current = ""

    def _run_failed(self, e):
        self.status = "failed"
        self.failure = _text(e, "error")

    # ---------------------------------------------------------------- checkpoints of the fold
    # What a checkpoint must bring back: the counts. Status, the shards' places and samples in
    # flight describe the moment, and the run_started that follows a resume sets them anew.
    _KEPT = ("steps_done", "agents_done", "agent_seconds", "calls", "tokens_in", "tokens_out", "errors", "answers",
             "error_samples", "records", "by_model", "latencies", "restarts", "checkpoint_seq")

    # Calls to a provider were paid even when their step is redone after a resume (the redo finds
    # their replies in the response cache), so a rollback keeps the usage of priced models: their
    # calls, tokens and cost count once, as in an uninterrupted run. Offline models' calls are made
    # again on the redo, so theirs roll back.
    def _paid(self) -> dict:
        return copy.deepcopy({name: (m, self.latencies.get(name)) for name, m in self.by_model.items()
                              if self.prices.get(name, {}).get("provider") not in ("mock", "python", None)})

    def _keep_paid(self, paid: dict) -> None:
        for name, (m, hist) in paid.items():
            self.by_model[name] = m
            if hist is not None:
                self.latencies[name] = hist
        self.calls, self.tokens_in, self.tokens_out = (sum(_number(m, k) for m in self.by_model.values()) for k in COUNTED)

    def _snapshot(self) -> dict:
        return copy.deepcopy({k: getattr(self, k) for k in self._KEPT})

    def _restore(self, snapshot: dict) -> None:
        for k in self._KEPT:
            if k in snapshot:
                setattr(self, k, copy.deepcopy(snapshot[k]))

    def saved(self) -> dict:
        """The counts as JSON, for a checkpoint's driver.json (a resumed driver starts from them)."""
        return self._snapshot()

    @classmethod
    def restored(cls, saved: dict) -> "RunState":
        state = cls()
        known = {f.name for f in fields(cls)}
        state._restore({k: v for k, v in saved.items() if k in known})
        return state

    # ---------------------------------------------------------------- reading
    @property
    def cost_usd(self) -> float | None:
        """Dollars so far; None when a model that was called has no price."""
        total = 0.0
        for name, m in self.by_model.items():
            cost = m.get("cost_usd")
            if cost is None:
                if self.prices.get(name, {}).get("provider") in ("mock", "python"):
                    continue
                return None
            total += cost
        return total

    @property
    def failed_share(self) -> float:
        return self.errors / self.answers if self.answers else 0.0

    @property
    def agents_per_second(self) -> float:
        """Agents stepped per second of agent steps (what the throughput chart shows, step by step)."""
        return self.agents_done / self.agent_seconds if self.agent_seconds > 0 else 0.0


_HANDLERS = {
    "run_started": RunState._run_started, "step_started": RunState._step_started,
    "shard_finished": RunState._shard_finished, "step_finished": RunState._step_finished,
    "personas_written": RunState._personas_written, "agent_errors": RunState._agent_errors,
    "record": RunState._record, "models": RunState._models, "calls_in_flight": RunState._calls_in_flight,
    "shards": RunState._shards, "shard_restarted": lambda s, e: s.restarts.append(e),
    "checkpoint": RunState._checkpoint, "step_interrupted": RunState._step_interrupted,
    "budget_reached": RunState._budget_reached,
    "run_paused": lambda s, e: setattr(s, "status", "paused"),
    "run_resumed": lambda s, e: setattr(s, "status", "running"),
    "run_finished": RunState._run_finished, "run_failed": RunState._run_failed,
}


def model_cost(priced: dict, counts: dict) -> float | None:
    """Dollars spent on one model from its plan price (USD per million tokens); offline models cost
    nothing; None when the model has no price. Anthropic reports cache reads and writes apart from
    the other input tokens: priced at `cache_read` / `cache_write` when given, else as input."""
    if priced.get("provider") in ("mock", "python"):
        return 0.0
    price = priced.get("price")
    if not isinstance(price, dict) or not price:
        return None
    return priced_usd(price, _number(counts, "tokens_in"), _number(counts, "tokens_out"),
                      _number(counts, "cache_read"), _number(counts, "cache_write"))


def prompt_cache_saving(priced: dict, cache_read, cache_write) -> float | None:
    """Dollars the provider's prompt cache saved: reads below the input price, less what writes
    cost above it. None without a price."""
    price = priced.get("price")
    if not isinstance(price, dict) or "input" not in price:
        return None
    full = price["input"]
    return (cache_read * (full - price.get("cache_read", full)) - cache_write * (price.get("cache_write", full) - full)) / 1e6


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(e: dict, key: str):
    value = e.get(key, 0) if isinstance(e, dict) else 0
    return value if _is_number(value) else 0


def _text(e: dict, key: str) -> str:
    value = e.get(key, "")
    return value if isinstance(value, str) else ""


def _mapping(e: dict, key: str) -> dict:
    """population -> a count (shards, agents): entries that are not whole numbers >= 0 are left out."""
    value = e.get(key)
    if not isinstance(value, dict):
        return {}
    return {k: n for k, n in value.items() if _whole(n) and n >= 0}
