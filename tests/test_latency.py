"""Latency histograms: quantiles within 1% of the exact ones, old checkpoints' lists still read."""
from __future__ import annotations

import json

import numpy as np
import pytest

from populace.runtime.store import latency


@pytest.mark.parametrize("scale", [0.002, 0.3, 40.0])
def test_quantiles_are_within_one_percent_and_the_histogram_stays_small(scale):
    values = np.random.default_rng(1).exponential(scale, 200_000)
    histogram = latency.add({}, values)
    q = latency.quantiles(histogram)
    exact = np.sort(values)
    assert q["latency_p50_s"] == pytest.approx(exact[100_000], rel=0.011, abs=1e-4)
    assert q["latency_p95_s"] == pytest.approx(exact[190_000], rel=0.011, abs=1e-4)
    assert len(histogram) < 1_000 and json.loads(json.dumps(histogram)) == histogram


def test_edge_cases_and_old_checkpoints():
    assert latency.quantiles({}) == {}
    assert latency.quantiles(latency.add({}, [0.0, float("nan")])) == {"latency_p50_s": 0.0001, "latency_p95_s": 0.0001}
    # driver.json from before histograms kept every sample in a list
    assert latency.from_any([0.5, 0.5, 2.0]) == latency.add({}, [0.5, 0.5, 2.0])
    assert latency.from_any(None) == {}
