"""One model's `in_flight` limit shared by every shard of a run: permits that shards borrow and return;
and its per-minute limits, as token buckets every shard draws credits from (limits.py).

In: the model's in_flight limit (the pool's size) and, from each shard, how many calls it could
make now. Out: permits granted (up to what is free), taken back when a shard's calls end, and a
pause that every shard honours when a provider said Retry-After to one of them.

Why: a static split (shard i of n gets in_flight / n) leaves a finished shard's share idle while
other shards still have agents to ask, so the cluster runs under the limit the user set. With the
pool, a shard takes what is free whenever it has work and gives each permit back as soon as its
queue is empty, so busy shards pick up idle ones' share. The local executor holds the pool as a
plain object when its shards run in its own process (one after another: each gets the whole limit)
and in a manager process when they run in worker processes (shared.py); the Ray executor as one
small actor per model (PermitPool below), asked at most every POLL seconds per shard.

A shard that dies holding permits would leak them: each holder is named (population, shard), and
a shard that starts (or is restarted) returns what its name held.
"""
from __future__ import annotations

import time

from .limits import RateBuckets

POLL = 0.05  # seconds between a busy shard's asks for more permits


class PermitPool:
    def __init__(self, capacity: int, per_minute: float | None = None, tokens_per_minute: float | None = None):
        self.capacity = max(1, int(capacity))
        # The per-minute limits as token buckets (limits.py), for every shard at once.
        self.rates = RateBuckets(per_minute, tokens_per_minute) if per_minute or tokens_per_minute else None
        self.free = self.capacity
        self.held: dict = {}
        self.paused_until = 0.0  # wall-clock time: shards on other machines compare with theirs
        self.peak = 0  # most permits out at once: benchmarks and tests read it

    def take(self, holder, want: int) -> tuple[int, float]:
        """Up to `want` permits for `holder`; and how many seconds every shard should still wait."""
        grant = max(0, min(int(want), self.free))
        self.free -= grant
        self.held[holder] = self.held.get(holder, 0) + grant
        self.peak = max(self.peak, self.capacity - self.free)
        return grant, max(0.0, self.paused_until - time.time())

    def give(self, holder, count: int) -> None:
        count = min(int(count), self.held.get(holder, 0))
        self.held[holder] = self.held.get(holder, 0) - count
        self.free += count

    def reset(self, holder) -> None:
        """`holder` starts afresh (a new or restarted shard): what it held is free again."""
        self.give(holder, self.held.get(holder, 0))

    def pause(self, seconds: float) -> None:
        """A provider asked to wait (Retry-After): no shard sends before then."""
        self.paused_until = max(self.paused_until, time.time() + float(seconds))

    def take_rate(self, holder, requests: int, tokens: float) -> tuple[int, float, float]:
        """Credits for up to `requests` requests and their `tokens` (limits.RateBuckets.take)."""
        return self.rates.take(requests, tokens) if self.rates else (requests, tokens, 0.0)

    def give_rate(self, holder, requests: int, tokens: float) -> None:
        if self.rates:
            self.rates.give(requests, tokens)

    def stats(self) -> dict:
        return {"capacity": self.capacity, "free": self.free, "peak": self.peak}


def pool_limits(plan) -> dict:
    """{model: (in_flight, per_minute, tokens_per_minute)} for each LLM model (mock and python
    models have no limit to share)."""
    return {name: (model.limits.in_flight, model.limits.per_minute, model.limits.tokens_per_minute)
            for name, model in plan.models.items()
            if model.provider in ("anthropic", "openai") and model.limits.in_flight}


def make_pools(plan, ray=None) -> dict:
    """A pool per LLM model: plain objects, or Ray actors when `ray` is given."""
    pools = {}
    for name, limits in pool_limits(plan).items():
        if ray is None:
            pools[name] = PermitPool(*limits)
        else:
            # Shards find the actor by its name: a handle among a restartable actor's constructor
            # arguments would have to live in the object store (Ray warns of lost restarts).
            import uuid

            actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(PermitPool)
            label = f"populace-permits-{uuid.uuid4().hex[:12]}-{name}"
            pools[name] = RemotePool(label, actor.options(name=label).remote(*limits))
    return pools


class RemotePool:
    """A pool actor as shards receive it: its name (pickles small); the handle is looked up there."""

    def __init__(self, name: str, handle=None):
        self.name, self._handle = name, handle

    def __getstate__(self):
        return {"name": self.name}

    def __setstate__(self, state):
        self.name, self._handle = state["name"], None

    @property
    def handle(self):
        if self._handle is None:
            import ray

            self._handle = ray.get_actor(self.name)
        return self._handle


class Remote:
    """Calls on a plain object, or on the Ray actor a RemotePool names: the same code for both."""

    def __init__(self, target):
        self.target = target
        self.is_actor = isinstance(target, RemotePool)

    def call(self, method: str, *args):
        if not self.is_actor:
            return getattr(self.target, method)(*args)
        import ray

        return ray.get(getattr(self.target.handle, method).remote(*args))


class Lease:
    """A shard's side of a pool: the same calls on a plain object or a Ray actor handle."""

    def __init__(self, pool, holder):
        self.pool, self.holder = pool, holder
        self._call = Remote(pool).call
        self._call("reset", holder)

    def take(self, want: int) -> tuple[int, float]:
        return self._call("take", self.holder, want) if want > 0 else (0, 0.0)

    def give(self, count: int) -> None:
        if count > 0:
            self._call("give", self.holder, count)

    def pause(self, seconds: float) -> None:
        self._call("pause", seconds)

    def take_rate(self, requests: int, tokens: float) -> tuple[int, float, float]:
        return self._call("take_rate", self.holder, requests, tokens)

    def give_rate(self, requests: int, tokens: float) -> None:
        self._call("give_rate", self.holder, requests, tokens)
