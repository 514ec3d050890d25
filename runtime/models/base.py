"""Model clients a shard uses to answer an `ask` for many agents at once.

In: a plan model and an AskBatch (agent ids, prompts, system prompts, memory sizes, the output type,
the persona and context for python policies). Out: an Answers (typed values with NaN/None for
missing, raw replies, per-agent errors, token counts). Providers here: `mock` (deterministic
typed answers from a seeded hash of the prompt, offline) and `python` (a user function).
The `anthropic` and `openai` providers live in runtime/llm.py.
"""
from __future__ import annotations

import importlib
import json
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from populace.runtime.columns import rng
from populace.runtime.columns.vector import is_vector

OFFLINE_PROVIDERS = ("mock", "python")

_WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
          "word but what some we can out other were all there when up use your how said an each she which do their "
          "time if will way about many then them write would like so these her long make thing see him two has look "
          "more day could go come did number sound no most people my over know water than call first who may down "
          "side been now find").split()


class ModelError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (ModelError, (self.message,))


@dataclass
class AskBatch:
    ids: np.ndarray
    prompt: object  # one str for everyone, or a list of str
    system: object  # None, one str, or a list of str
    memory_chars: np.ndarray  # characters of memory each agent sends with the prompt
    output: dict  # the plan output type
    where: str  # step id and iteration
    seed: int
    persona: dict = field(default_factory=dict)  # columns of these agents
    state: dict = field(default_factory=dict)
    variables: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    memory: object = None  # callable(i) -> list of (role, text) for agent i of this batch
    shards: int = 1
    verbatim: bool = False  # the prompt is sent as written: no reply instruction appended
    system_shared: int = 0  # leading characters of every system prompt here that all agents share

    def uniforms(self, purpose: str) -> np.ndarray:
        """Per-agent uniforms in [0, 1) for a policy's own randomness (seeded, shard-independent)."""
        return rng.uniforms(self.ids, rng.key(self.seed, purpose, self.where))


@dataclass
class Answers:
    values: np.ndarray  # float64 with NaN for numbers and bools; object with None otherwise
    replies: list | None  # raw reply text per agent (None for a policy that returns values only)
    errors: list  # None or a message, per agent
    tokens_in: int = 0
    tokens_out: int = 0
    calls: int = 0


def empty_values(output: dict, n: int) -> np.ndarray:
    if output["kind"] in ("int", "float", "bool"):
        return np.full(n, np.nan)
    return np.full(n, None, dtype=object)


def _chars(x, n) -> np.ndarray:
    if x is None:
        return np.zeros(n, dtype=np.int64)
    if isinstance(x, str):
        return np.full(n, len(x), dtype=np.int64)
    return np.fromiter((len(s) for s in x), dtype=np.int64, count=n)


def _tokens(chars) -> int:
    # ~4 characters per token: the same rule `populace explain` estimates with.
    return int(np.ceil(np.asarray(chars) / 4).sum())


class MockModel:
    """Deterministic, always-valid typed answers; renders and counts the real prompt."""

    def __init__(self, name: str, settings: dict, limits):
        self.name = name
        self.latency = float(settings.get("latency", 0.0))
        self.words = int(settings.get("words", 12))
        self.in_flight = limits.in_flight

    def _hashes(self, batch: AskBatch, extra: str = "") -> np.ndarray:
        k = rng.key(batch.seed, "mock", self.name, batch.where, extra)
        if isinstance(batch.prompt, str):
            prompt_hash = np.uint64(rng.text_hash(batch.prompt))
        else:
            cache: dict = {}
            prompt_hash = np.fromiter((cache.setdefault(p, rng.text_hash(p)) if p not in cache else cache[p]
                                       for p in batch.prompt), dtype=np.uint64, count=len(batch.ids))
        return rng.mix(rng.mix(batch.ids, k) ^ prompt_hash, 0x5EED)

    def _wait(self, n: int, shards: int) -> None:
        if self.latency > 0 and n:
            # Calls wait in waves of this shard's share of the cluster-wide in_flight limit.
            share = max(1, self.in_flight // max(1, shards))
            time.sleep(math.ceil(n / share) * self.latency)

    def ask(self, batch: AskBatch) -> Answers:
        n = len(batch.ids)
        self._wait(n, batch.shards)
        values, replies = self.typed(batch.output, self._hashes(batch), n)
        prompt_chars = _chars(batch.prompt, n) + _chars(batch.system, n) + batch.memory_chars
        reply_chars = np.fromiter((len(r) for r in replies), dtype=np.int64, count=n)
        return Answers(values=values, replies=replies, errors=[None] * n, tokens_in=_tokens(prompt_chars),
                       tokens_out=_tokens(reply_chars), calls=n)

    def typed(self, ty: dict, h: np.ndarray, n: int):
        kind = ty["kind"]
        if kind in ("int", "float"):
            low = ty.get("min", 0)
            high = ty.get("max", 100 if kind == "int" else 1.0)
            if kind == "int":
                span = int(high) - int(low) + 1
                values = (int(low) + (h % np.uint64(span)).astype(np.int64)).astype(np.float64)
                cache: dict = {}
                replies = [cache.setdefault(v, str(v)) for v in values.astype(np.int64).tolist()]
            else:
                values = low + (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) * (high - low)
                replies = [f"{v:.4f}" for v in values.tolist()]
            return values, replies
        if kind == "bool":
            values = (h & np.uint64(1)).astype(np.float64)
            return values, ["true" if v else "false" for v in values.tolist()]
        if kind == "enum":
            options = ty["values"]
            table = np.empty(len(options), dtype=object)
            table[:] = options
            values = table[(h % np.uint64(len(options))).astype(np.int64)]
            return values, [str(v) for v in values.tolist()]
        if kind == "str" or kind == "any":
            values = np.empty(n, dtype=object)
            values[:] = [self.text(int(x)) for x in h.tolist()]
            return values, list(values)
        if kind in ("list", "record"):
            values = np.empty(n, dtype=object)
            parts = {}
            if kind == "list":
                for j in range(3):
                    parts[j] = self.typed(ty["item"], rng.mix(h, 1000 + j), n)[0]
                values[:] = [[_plain(parts[j][i]) for j in range(3)] for i in range(n)]
            else:
                for j, (fname, fty) in enumerate(sorted(ty["fields"].items())):
                    parts[fname] = (self.typed(fty, rng.mix(h, 2000 + j), n)[0], fty)
                values[:] = [{f: _plain(v[i], t) for f, (v, t) in parts.items()} for i in range(n)]
            return values, [json.dumps(v, sort_keys=True) for v in values.tolist()]
        raise ModelError(f"the mock model cannot answer type {kind}")

    def text(self, h: int) -> str:
        words = []
        for i in range(self.words):
            h = (h * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
            words.append(_WORDS[(h >> 33) % len(_WORDS)])
        return " ".join(words).capitalize() + "."

    def write(self, prompts: list[str], seed: int) -> list[str]:
        self._wait(len(prompts), 1)
        return [self.text(rng.text_hash(f"{seed}\x1f{self.name}\x1f{p}")) for p in prompts]


def _plain(v, ty=None):
    if isinstance(v, float) and ty is not None and ty.get("kind") == "int":
        return int(v)
    if isinstance(v, float) and ty is not None and ty.get("kind") == "bool":
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


class PythonModel:
    """A user function `module:function`. Marked with `populace_batch = True` it gets the whole
    AskBatch and returns one value per agent; otherwise it is called once per agent with a dict
    (id, persona, state, memory, prompt, variables, env) and returns that agent's value."""

    def __init__(self, name: str, settings: dict, limits, folder: str | None = None):
        self.name = name
        self.target = settings.get("function")
        if not isinstance(self.target, str) or ":" not in self.target:
            raise ModelError(f"model `{name}`: `function` must be \"module:function\", not {self.target!r}")
        module, _, attr = self.target.partition(":")
        try:
            try:
                loaded = importlib.import_module(module)
            except ImportError:
                if not folder or folder in sys.path:
                    raise
                # a module next to the scenario (this process may have started elsewhere: a Ray worker)
                sys.path.insert(0, folder)
                loaded = importlib.import_module(module)
            self.function = getattr(loaded, attr)
        except (ImportError, AttributeError) as e:
            raise ModelError(f"model `{name}`: cannot load {self.target}: {e}") from None

    def ask(self, batch: AskBatch) -> Answers:
        n = len(batch.ids)
        errors: list = [None] * n
        if getattr(self.function, "populace_batch", False):
            try:
                raw = self.function(batch)
            except Exception as e:  # a user's policy failed: every agent of the batch gets the error
                message = f"{type(e).__name__}: {e}"
                return Answers(values=empty_values(batch.output, n), replies=None, errors=[message] * n, calls=n)
            raw = list(raw) if not isinstance(raw, np.ndarray) else raw
            if len(raw) != n:
                return Answers(values=empty_values(batch.output, n), replies=None,
                               errors=[f"{self.target} returned {len(raw)} values for {n} agents"] * n, calls=n)
        else:
            raw = []
            prompts = [batch.prompt] * n if isinstance(batch.prompt, str) else batch.prompt
            for i in range(n):
                agent = {"id": int(batch.ids[i]), "persona": {k: _plain(v[i]) for k, v in batch.persona.items()},
                         "state": {k: _plain(v[i]) for k, v in batch.state.items()},
                         "memory": batch.memory(i) if batch.memory else [], "prompt": prompts[i],
                         "variables": batch.variables, "env": batch.env}
                try:
                    raw.append(self.function(agent))
                except Exception as e:  # recorded for this agent; the others go on
                    raw.append(None)
                    errors[i] = f"{type(e).__name__}: {e}"
        values, checked_errors = validate(raw, batch.output)
        errors = [e or c for e, c in zip(errors, checked_errors)]
        return Answers(values=values, replies=None, errors=errors, calls=n)

    def write(self, prompts: list[str], seed: int) -> list[str]:
        raise ModelError(f"model `{self.name}` (python) cannot write persona text; use a mock or LLM model")


def validate(raw, output: dict):
    """Check python-policy values against the output type: (values, per-agent error or None)."""
    n = len(raw)
    kind = output["kind"]
    values = empty_values(output, n)
    errors: list = [None] * n
    if kind in ("int", "float", "bool"):
        arr = np.asarray(raw, dtype=object) if not isinstance(raw, np.ndarray) else raw
        try:
            nums = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError):
            nums = np.array([_num(x) for x in arr], dtype=np.float64)
        bad = np.isnan(nums)
        if kind == "int":
            bad |= ~np.isnan(nums) & (nums != np.round(nums))
        if kind == "bool":
            bad |= ~np.isnan(nums) & (nums != 0) & (nums != 1)
        if "min" in output:
            bad |= nums < output["min"]
        if "max" in output:
            bad |= nums > output["max"]
        values = np.where(bad, np.nan, nums)
        for i in np.flatnonzero(bad).tolist():
            errors[i] = f"{_show(raw[i])} is not a valid {_type_text(output)}"
        return values, errors
    for i, v in enumerate(raw):
        if kind == "enum" and v not in output["values"]:
            errors[i] = f"{_show(v)} is not one of {output['values']}"
        elif kind == "str" and not isinstance(v, str):
            errors[i] = f"{_show(v)} is not text"
        else:
            values[i] = v
    return values, errors


def _num(x):
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return math.nan


def _show(v) -> str:
    text = repr(v)
    return text if len(text) < 60 else text[:57] + "..."


def _type_text(ty: dict) -> str:
    if "min" in ty or "max" in ty:
        return f"{ty['kind']} in {ty.get('min', '?')}..{ty.get('max', '?')}"
    return ty["kind"]


def make_model(model, shard_index: int = 0, shards: int = 1, options: dict | None = None, holder=None):
    """A client for one plan Model: its calls in flight borrowed from the run's pool for the model
    (options["permits"], leases.py) as `holder`, else this shard's static share of the limits."""
    if model.provider == "mock":
        return MockModel(model.name, model.settings, model.limits)
    if model.provider == "python":
        return PythonModel(model.name, model.settings, model.limits, (options or {}).get("scenario_dir"))
    from .cache import ResponseCache
    from .llm import LLMModel

    options = options or {}
    cache = ResponseCache(options["cache"]) if options.get("cache") else None
    pool = (options.get("permits") or {}).get(model.name)
    holder = holder if holder is not None else ("", shard_index)
    lease = budget = None
    if pool is not None:
        from .leases import Lease

        lease = Lease(pool, holder)
    if options.get("budget_ledger") is not None:
        from .budget import Allowance

        budget = Allowance(options["budget_ledger"], (model.name, *holder))
    return LLMModel(model, shard_index, shards, cache, bool(options.get("replay")), options.get("environment"),
                    lease=lease, budget=budget)
