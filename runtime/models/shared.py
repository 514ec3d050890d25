"""The run's shared limits for the local executor's worker processes: one manager process holding
every in_flight pool (leases.PermitPool) and the budget ledger (budget.Ledger).

In: the pools and the ledger as the in-process executor makes them (plain objects). Out: the same
objects' proxies, which pickle into each worker and forward every call to the manager; Remote
(leases.py) calls a proxy as it calls a plain object, so shards need no third code path.

Why a lock: the manager answers each worker's connection on a thread of its own, and the pool's
and ledger's arithmetic (free -= grant) is not atomic across threads.
"""
from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.managers import BaseManager

from .budget import Ledger
from .leases import PermitPool, pool_limits

POOL_CALLS = ["take", "give", "reset", "pause", "take_rate", "give_rate", "stats"]
LEDGER_CALLS = ["draw", "settle", "reset", "stats"]


class Locked:
    """`target` with one call at a time."""

    def __init__(self, target):
        self._target, self._lock = target, threading.Lock()

    def __getattr__(self, name):
        method = getattr(self._target, name)

        def locked(*args):
            with self._lock:
                return method(*args)
        return locked


def _pool(*args):
    return Locked(PermitPool(*args))


def _ledger(*args):
    return Locked(Ledger(*args))


class LimitsManager(BaseManager):
    pass


LimitsManager.register("PermitPool", _pool, exposed=POOL_CALLS)
LimitsManager.register("Ledger", _ledger, exposed=LEDGER_CALLS)


def share(plan, budget: dict | None) -> tuple:
    """(manager, {model: pool proxy}, ledger proxy or None): as leases.make_pools and
    budget.make_ledger make them, held by a manager process. `manager.shutdown()` ends it."""
    manager = LimitsManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(_quiet)
    pools = {name: manager.PermitPool(*limits) for name, limits in pool_limits(plan).items()}
    ledger = manager.Ledger(budget["limit"], budget.get("spent", 0.0)) if budget else None
    return manager, pools, ledger


def _quiet() -> None:
    """The manager ignores Ctrl-C: the driver, which it serves until the end, shuts it down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
