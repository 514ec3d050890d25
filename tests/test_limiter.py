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


# ---------------------------------------------------------------- per-minute limits as run-wide buckets

def test_bucket_refills_continuously_and_grants_whole_requests():
    from populace.runtime.models.limits import Bucket, RateBuckets

    now = [0.0]
    bucket = Bucket(10, 2.0, clock=lambda: now[0])
    assert bucket.take(8, whole=True) == 8 and bucket.take(8, whole=True) == 2 and bucket.take(1) == 0
    assert bucket.wait_for(3) == pytest.approx(1.5)
    now[0] = 1.0
    assert bucket.take(5, whole=True) == 2  # refilled at 2 a second
    now[0] = 100.0
    assert bucket.take(50) == 10  # never above the capacity
    assert Bucket(10, 1.0).take_oversize(25) == 25  # one request above the capacity goes at a full bucket
    assert RateBuckets(None, 100).take(2, 500) == (1, 250.0, 0.0)  # one at a time, then the bucket is in debt
    rates = RateBuckets(per_minute=6, tokens_per_minute=100)
    assert rates.take(4, 120) == (3, 90.0, 0.0)  # 4 requests of 30 tokens: the tokens allow 3
    got, tokens, wait = rates.take(1, 30)
    assert (got, tokens) == (0, 0.0) and wait > 0  # 10 tokens left: not one more request
    rates.give(3, 90.0)
    assert rates.take(2, 60)[:2] == (2, 60.0)


@pytest.mark.slow
def test_per_minute_is_one_limit_for_every_shard(tmp_path, monkeypatch, ray_session):
    import time

    arrivals: list = []

    def reply(prompt: str, request: dict) -> str:
        arrivals.append((time.monotonic(), int(prompt.split(":")[0].split()[-1])))
        return "7"

    text = OPENAI_SCENARIO.replace("in_flight = {in_flight}", "in_flight = {in_flight}\n  per_minute = 120")
    text = text.replace('ask voters "Pick a number for agent {{{{persona.mood}}}}."',
                        'ask voters where self.id < 130 "Agent {{{{self.id}}}}: pick a number."')
    text = text.replace("record mean_pick = mean(voters.pick), answered = count(voters.pick)",
                        "record answered = count(voters.pick)")
    with FakeLLM(latency=0.0, reply=reply) as fake:
        monkeypatch.setenv("FAKE_KEY", "k")
        path = tmp_path / "rate.pop"
        path.write_text(text.format(urls=f'"{fake.openai_url}"', in_flight=64))
        summary, metrics, _ = run(path, tmp_path, "rate", "ray", 3, ["n=180"])
    assert summary["status"] == "finished" and metrics[0]["answered"] == 130
    times = sorted(t for t, _ in arrivals)
    # The bucket: 120 at once, then 2 a second; never more (a slow machine only sends later).
    for k, t in enumerate(times):
        assert k + 1 <= 120 + 2 * (t - times[0]) + 2, (k, t - times[0])
    # One bucket for all: shard 0 (agents 0-59) sent more than the 40 a static third would allow.
    first = [agent for _, agent in sorted(arrivals)[:120]]
    assert sum(agent < 60 for agent in first) > 40
