"""A model's per-minute limits: requests and (estimated input) tokens per minute.

In: the limits (`per_minute`, `tokens_per_minute`) and, per request, its estimated tokens. Out:
`acquire` returns when the request may be sent.

Cluster-wide (`PooledLimiter`): the run's pool for the model (leases.py) holds one token bucket per
limit, as the providers count them (Anthropic: capacity = the per-minute limit, refilled
continuously at limit / 60 a second). A shard draws credits in small chunks when it has requests
to send and gives the unused back when its ask ends, so a shard with no work leaves the whole
rate to the others. `Limiter` is the older per-shard sliding minute over a static share (`share`),
kept for a shard without a pool.
"""
from __future__ import annotations

import asyncio
import time


class Limiter:
    """This shard's share of a model's per-minute limits: requests and tokens, in a sliding minute."""

    def __init__(self, per_minute: float | None, tokens_per_minute: float | None, window: float = 60.0):
        self.window = window  # seconds; tests shrink it
        self.per_minute = per_minute
        self.tokens_per_minute = tokens_per_minute
        self.requests: list[float] = []
        self.tokens: list[tuple[float, int]] = []
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.per_minute and not self.tokens_per_minute:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.requests = [t for t in self.requests if now - t < self.window]
                self.tokens = [(t, k) for t, k in self.tokens if now - t < self.window]
                wait = 0.0
                if self.per_minute and len(self.requests) >= self.per_minute:
                    wait = max(wait, self.window - (now - self.requests[0]))
                used = sum(k for _, k in self.tokens)
                if self.tokens_per_minute and self.tokens and used + tokens > self.tokens_per_minute:
                    wait = max(wait, self.window - (now - self.tokens[0][0]))
                if wait <= 0:
                    self.requests.append(now)
                    self.tokens.append((now, tokens))
                    return
                await asyncio.sleep(min(wait, 1.0))


class Bucket:
    """A token bucket: `capacity` at most, refilled at `per_second`. O(1) a request."""

    def __init__(self, capacity: float, per_second: float, clock=time.monotonic):
        self.capacity, self.per_second, self.clock = float(capacity), float(per_second), clock
        self.level, self.last = float(capacity), clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.last) * self.per_second)
        self.last = now

    def take(self, want: float, whole: bool = False) -> float:
        """Up to `want` credits (whole ones when `whole`)."""
        self._refill()
        grant = max(0.0, min(want, self.level))
        if whole:
            grant = float(int(grant))
        self.level -= grant
        return grant

    def take_oversize(self, amount: float) -> float:
        """One request larger than the whole capacity: granted once the bucket is full (it is then
        in debt), as a provider lets such a request through at an empty minute."""
        self._refill()
        if self.level >= self.capacity:
            self.level -= amount
            return amount
        return 0.0

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` credits are there."""
        self._refill()
        return max(0.0, min(amount, self.capacity) - self.level) / self.per_second


class RateBuckets:
    """A model's per-minute limits as buckets, held by its pool (one object for every shard)."""

    def __init__(self, per_minute: float | None, tokens_per_minute: float | None, window: float = 60.0):
        self.requests = Bucket(per_minute, per_minute / window) if per_minute else None
        self.tokens = Bucket(tokens_per_minute, tokens_per_minute / window) if tokens_per_minute else None

    def take(self, requests: int, tokens: float) -> tuple[int, float, float]:
        """Up to `requests` requests of `tokens / requests` tokens each: (requests granted, their
        tokens, seconds to wait before asking again when none was granted)."""
        per = tokens / max(requests, 1)
        got = int(self.requests.take(requests, whole=True)) if self.requests else requests
        if not got:
            return 0, 0.0, self.requests.wait_for(1)
        if not self.tokens or per == 0:
            return got, per * got, 0.0
        if per > self.tokens.capacity:
            if self.requests and got > 1:
                self.requests.give(got - 1)
            if self.tokens.take_oversize(per):
                return 1, per, 0.0
            if self.requests:
                self.requests.give(1)
            return 0, 0.0, self.tokens.wait_for(self.tokens.capacity)
        have = self.tokens.take(per * got)
        fit = min(got, int(have // per + 1e-9))
        if self.requests and got > fit:
            self.requests.give(got - fit)
        self.tokens.give(have - fit * per)
        return (fit, fit * per, 0.0) if fit else (0, 0.0, self.tokens.wait_for(per))

    def give(self, requests: int, tokens: float) -> None:
        if self.requests and requests:
            self.requests.give(requests)
        if self.tokens and tokens:
            self.tokens.give(tokens)


class PooledLimiter:
    """A shard's side of the run-wide rate buckets: credits drawn in chunks, the rest given back."""

    def __init__(self, lease, chunk: int):
        self.lease, self.chunk = lease, max(1, int(chunk))
        self.requests, self.tokens = 0, 0.0
        self.lock = None

    async def acquire(self, tokens: int) -> None:
        if self.lock is None:
            self.lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        async with self.lock:
            while self.requests < 1 or self.tokens < tokens - 1e-6:
                r, t, wait = await loop.run_in_executor(None, self.lease.take_rate, self.chunk, tokens * self.chunk)
                self.requests += r
                self.tokens += t
                if not r:
                    await asyncio.sleep(min(max(wait, 0.01), 1.0))
            self.requests -= 1
            self.tokens = max(0.0, self.tokens - tokens)

    def release(self) -> None:
        """The ask ended: unused credits go back to the pool (blocking: call off the event loop)."""
        if self.requests or self.tokens:
            self.lease.give_rate(self.requests, self.tokens)
            self.requests, self.tokens = 0, 0.0


def share(limit, index: int, shards: int):
    if not limit:
        return None
    base, rest = divmod(int(limit), shards)
    return max(1, base + (1 if index < rest else 0))
