"""One in_flight pool per model for the whole run (runtime/models/leases.py): with shards of uneven
work, busy shards borrow the permits idle ones do not use, and the declared limit still holds;
a Retry-After seen by one shard is passed to all (checked on the pool; end to end it is not yet).
Real Ray, the real openai SDK, the fake server."""
from __future__ import annotations

import pytest

from fake_llm import FakeLLM
from populace.runtime.models.leases import Lease, PermitPool
from test_runtime_llm import OPENAI_SCENARIO, run

# Only agents 0..149 of 300 answer: with 3 shards of 100, shard 0 has 100 calls, shard 1 has 50,
# shard 2 none. A static split (in_flight / 3 each) could never have more than 2/3 of it out.
UNEVEN = OPENAI_SCENARIO.replace('ask voters "', 'ask voters where self.id < 150 "')


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_busy_shards_borrow_the_idle_shards_permits(tmp_path, monkeypatch, ray_session, executor):
    with FakeLLM(latency=0.1) as fake:
        monkeypatch.setenv("FAKE_KEY", "k")
        path = tmp_path / "vote.pop"
        path.write_text(UNEVEN.format(urls=f'"{fake.openai_url}"', in_flight=24))
        summary, metrics, _ = run(path, tmp_path, "uneven", executor, 3, ["n=300"])
        peak = fake.peak_in_flight
    assert summary["errors"] == 0 and metrics[0]["answered"] == 150
    assert 20 <= peak <= 24, peak  # the whole limit in use (a static split: at most 16), never more


def test_a_pool_grants_what_is_free_and_takes_back_a_dead_holders_permits():
    pool = PermitPool(10)
    a, b = Lease(pool, ("p", 0)), Lease(pool, ("p", 1))
    assert a.take(7) == (7, 0.0) and b.take(7)[0] == 3 and b.take(1)[0] == 0
    a.give(5)
    assert b.take(9)[0] == 5 and pool.stats()["free"] == 0 and pool.stats()["peak"] == 10
    Lease(pool, ("p", 1))  # shard 1 restarted: its 8 permits are free again
    assert pool.stats()["free"] == 8
    a.pause(0.5)
    grant, wait = b.take(1)
    assert grant == 1 and 0.3 < wait <= 0.5
