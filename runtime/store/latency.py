"""Call latencies kept as a histogram: bounded memory and checkpoint size however long the run.

In: latencies in seconds (samples the shards send after each ask). Out: a dict of counts per
logarithmic bin (JSON, checkpointed in driver.json) and its p50 / p95. Bins grow by 2%, from
0.1 ms up, so a quantile is within 1% of the sampled value; a million-call run and a billion-call
run keep the same few hundred numbers (a list of every sample grew without bound).
"""
from __future__ import annotations

import math

SMALLEST = 1e-4  # seconds: bin 0 holds everything up to here
RATIO = 1.02
_LOG_RATIO = math.log(RATIO)


def bin_of(seconds: float) -> int:
    if not seconds > SMALLEST:  # also NaN
        return 0
    return int(round(math.log(seconds / SMALLEST) / _LOG_RATIO))


def add(histogram: dict, values) -> dict:
    """Count `values` into `histogram` ({str(bin): count}: JSON keys are text)."""
    for v in values:
        key = str(bin_of(float(v)))
        histogram[key] = histogram.get(key, 0) + 1
    return histogram


def from_any(saved) -> dict:
    """A checkpoint's latencies: a histogram, or (driver.json from before histograms) a list."""
    return add({}, saved) if isinstance(saved, list) else dict(saved or {})


def quantiles(histogram: dict) -> dict:
    """p50 and p95 (nearest rank, seconds, 4 digits) or nothing when there were no calls."""
    total = sum(histogram.values())
    if not total:
        return {}
    out = {}
    for name, q in (("latency_p50_s", 0.5), ("latency_p95_s", 0.95)):
        rank = min(total - 1, int(total * q))
        seen = 0
        for key in sorted(histogram, key=int):
            seen += histogram[key]
            if seen > rank:
                out[name] = round(SMALLEST * RATIO ** int(key), 4)
                break
    return out
