"""A stock market as a Python environment kind: an example of `@environment_kind`.

In the scenario: `environment exchange : market(traders, price = 60.0, impact = 0.2)` with
`extensions = ["market"]` in the scenario block. Each round the traders' orders ("buy", "sell",
"hold") move the price by `impact` times the net demand (buyers minus sellers, as a share of the
traders), multiplicatively; each trader's position is kept. The state is plain JSON (the driver
checkpoints it with the run), and every method runs in the driver only.
"""
from __future__ import annotations

import math

from populace.runtime import action, each, environment_kind, param, query


@environment_kind("market")
class Market:
    """One stock, one price; the traders' net demand moves it."""

    traders = param("population", doc="who trades")
    price = param(float, 100.0, low=0.01, doc="the opening price")
    impact = param(float, 0.5, low=0.0, high=5.0, doc="log-price change when everyone buys")

    def start(self, agents: int) -> dict:
        return {"price": self.price, "history": [self.price], "volume": 0, "positions": [0] * agents}

    @action(each(str))
    def order(self, state: dict, orders: list) -> None:
        """orders[i] is trader i's order, None if it gave none (counts as hold)."""
        buys = sells = 0
        positions = state["positions"]
        for i, o in enumerate(orders):
            if o == "buy":
                buys += 1
                positions[i] += 1
            elif o == "sell":
                sells += 1
                positions[i] -= 1
        net = (buys - sells) / max(len(orders), 1)
        state["price"] = round(state["price"] * math.exp(self.impact * net), 4)
        state["history"].append(state["price"])
        state["volume"] = buys + sells

    @query(float)
    def quote(self, state: dict) -> float:
        return state["price"]

    @query(float)
    def change(self, state: dict) -> float:
        """The price change since the round before (0 in the first round)."""
        h = state["history"]
        return round(h[-1] - h[-2], 4) if len(h) > 1 else 0.0

    @query(int)
    def volume(self, state: dict) -> int:
        return state["volume"]

    @query(list[float], int)
    def history(self, state: dict, n: int) -> list:
        return state["history"][-n:] if n > 0 else []

    @query(int, per_agent=True)
    def position(self, state: dict) -> list:
        """Each trader's shares (bought minus sold so far)."""
        return state["positions"]
