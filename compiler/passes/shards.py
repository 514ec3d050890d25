"""Pass 13, shards: how each population may be split across workers.

Reads: ctx.populations. Adds: each population's `max_agents_per_shard`; the runtime picks the shard
count (by cores and cluster size), never with more agents in a shard than this.
"""
from __future__ import annotations

from ..context import Context

MAX_AGENTS_PER_SHARD = 250_000


def assign_shards(ctx: Context) -> None:
    """Say how each population may be split: the runtime picks the count, never above this size."""
    for pop in ctx.populations.values():
        pop["max_agents_per_shard"] = MAX_AGENTS_PER_SHARD
