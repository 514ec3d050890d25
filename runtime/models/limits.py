"""A shard's share of a model's per-minute limits: requests and tokens in a sliding minute.

In: the limits (`per_minute`, `tokens_per_minute`, already this shard's share: `share`) and, per
request, its estimated tokens. Out: `acquire` returns when the request fits in the last minute.
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


def share(limit, index: int, shards: int):
    if not limit:
        return None
    base, rest = divmod(int(limit), shards)
    return max(1, base + (1 if index < rest else 0))
