"""A run's hard budget in dollars: a ledger every shard draws on before each LLM call.

In: the budget (`--budget 25usd`, the scenario's `budget = 25`), what the run had spent before
(a resumed run), and from each call its model's price, the worst case it may cost (its input
estimate and `max_tokens` of output) and, once answered, what it cost (the provider's usage).
Out: a yes or no before each call, and the dollars spent and still free.

Why worst case: a call is allowed only when what is spent, plus what the calls already out may
still cost at most, plus this call's worst case stays within the budget; so the run never passes
the budget by more than the error of the input estimate (characters / 3, above the usual
characters / 4 of English text). A refused call ends the ask: the calls in flight finish (their
replies are in the response cache, so `resume` does not pay for them again), and the run stops
with a checkpoint before the step.

Shards draw dollars in chunks, not per call (a Ray actor's round trip per call would cost more
than the call's client work): a chunk is a few dozen calls' worst case, and a shard gives back
what it did not use when its ask ends, or when it runs short, so another shard can use it. When
the ledger has too little left but another shard still holds some, a shard waits for it (its
calls end and settle) before it refuses.
"""
from __future__ import annotations

import re

CHUNK_CALLS = 32  # worst cases drawn at once by a shard
POLL = 0.05  # seconds between a starved shard's asks while another shard still holds dollars


class BudgetError(ValueError):
    pass


def parse_usd(text) -> float:
    """`25usd`, `25 USD`, `$25`, `25.50`, `25` -> 25.0 dollars; anything else raises BudgetError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*\$?\s*(\d+(?:\.\d*)?|\.\d+)\s*(usd|\$)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise BudgetError(f"budget {text!r} is not an amount of dollars: write it like 25usd, $25 or 25.50")
        value = float(m.group(1))
    if not value > 0:
        raise BudgetError(f"budget {text!r} must be more than 0 dollars")
    return value


def priced_usd(price: dict, tokens_in=0, tokens_out=0, cache_read=0, cache_write=0) -> float:
    """Dollars for token counts at `price` (USD per million tokens: input, output, cache_read,
    cache_write; cache reads and writes at the input price when they have none of their own)."""
    return (tokens_in * price.get("input", 0) + tokens_out * price.get("output", 0)
            + cache_read * price.get("cache_read", price.get("input", 0))
            + cache_write * price.get("cache_write", price.get("input", 0))) / 1e6


def worst_case(price: dict, input_chars: int, max_tokens: int) -> float:
    """The most a call may cost: its input at the full input price, all of `max_tokens` written."""
    return priced_usd(price, tokens_in=input_chars // 3 + 16, tokens_out=max_tokens)


def format_usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:,.4f}"


class Ledger:
    """The run's dollars: spent (settled calls) and held (drawn by shards, not yet settled)."""

    def __init__(self, limit: float, spent: float = 0.0):
        self.limit = float(limit)
        self.spent = float(spent)
        self.held: dict = {}  # holder -> dollars drawn and not given back

    def draw(self, holder, want: float, need: float) -> tuple[float, bool]:
        """Up to `want` dollars (at least `need`, or nothing) for `holder`; and whether another
        holder still has dollars out (then waiting may help)."""
        free = self.limit - self.spent - sum(self.held.values())
        grant = min(want, free) if free >= need else 0.0
        if grant > 0:
            self.held[holder] = self.held.get(holder, 0.0) + grant
        others = any(v > 1e-12 for k, v in self.held.items() if k != holder)
        return grant, others

    def settle(self, holder, spent: float, returned: float) -> None:
        """`holder` spent `spent` of what it held and gives `returned` back."""
        self.spent += spent
        self.held[holder] = max(0.0, self.held.get(holder, 0.0) - spent - returned)

    def reset(self, holder) -> None:
        """A (re)started shard holds nothing: what its earlier self held is free again."""
        self.held.pop(holder, None)

    def stats(self) -> dict:
        return {"limit": self.limit, "spent": self.spent, "held": sum(self.held.values())}


def make_ledger(budget: dict | None, ray=None):
    """The run's ledger ({"limit", "spent"} dollars): a plain object, or a Ray actor found by name."""
    if not budget:
        return None
    if ray is None:
        return Ledger(budget["limit"], budget.get("spent", 0.0))
    import uuid

    from .leases import RemotePool

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Ledger)
    label = f"populace-budget-{uuid.uuid4().hex[:12]}"
    return RemotePool(label, actor.options(name=label).remote(budget["limit"], budget.get("spent", 0.0)))


class Allowance:
    """A shard's side of the ledger: dollars drawn, spent call by call, given back at the end.
    Used from the shard's LLM event loop only; the ledger's calls (a Ray round trip) run off it."""

    def __init__(self, ledger, holder):
        from .leases import Remote

        self.remote = Remote(ledger)
        self.holder = holder
        self.free = 0.0  # drawn and not yet set aside for a call
        self.spent = 0.0  # settled since the last give-back
        self._refill = None  # asyncio.Lock of the event loop: one draw at a time
        self.remote.call("reset", holder)

    async def reserve(self, worst: float) -> bool:
        """Set aside `worst` dollars for one call; False when the budget cannot cover it."""
        import asyncio

        if self.free >= worst:
            self.free -= worst
            return True
        if self._refill is None:
            self._refill = asyncio.Lock()
        loop = asyncio.get_running_loop()
        async with self._refill:
            while self.free < worst:
                # Give back what is left first: with it the ledger may cover a chunk (or another shard).
                spent, left = self.spent, max(0.0, self.free)
                self.spent, self.free = 0.0, min(0.0, self.free)
                await loop.run_in_executor(None, self.remote.call, "settle", self.holder, spent, left)
                grant, others = await loop.run_in_executor(None, self.remote.call, "draw", self.holder,
                                                           worst * CHUNK_CALLS, worst - self.free)
                self.free += grant
                if self.free >= worst:
                    break
                if not others:
                    return False
                await asyncio.sleep(POLL)
            self.free -= worst
            return True

    def settle(self, worst: float, cost: float) -> None:
        """A call set aside `worst` and cost `cost` (0 when it failed)."""
        self.spent += cost
        self.free += worst - cost  # below 0 when the input estimate was short: drawn again next time

    def give_back(self) -> None:
        """The ask ended: spent dollars are settled, unused ones free for other shards."""
        if self.spent or self.free:
            self.remote.call("settle", self.holder, self.spent, max(0.0, self.free))
            self.spent, self.free = 0.0, 0.0


class BudgetReached(Exception):
    """A call was refused: the run's budget cannot cover it."""
