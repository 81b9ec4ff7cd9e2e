"""metrics.observe_many: one event's latency for many sockets counts like as many observations."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from backend.app.runtime.metrics import observe_many

BUCKETS = (0.001, 0.005, 0.01)


def _samples(histogram: Histogram) -> dict[str, float]:
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize(
    "observations",
    [
        [(0.0005, 3), (0.001, 2), (0.003, 4), (0.01, 1), (0.2, 5)],  # below, on and between the bounds, past the last
        [(0.0, 1000)],
        [(0.004, 0)],
    ],
)
def test_observe_many_equals_repeated_observations(observations) -> None:
    many = Histogram("many", "", buckets=BUCKETS, registry=CollectorRegistry())
    one_by_one = Histogram("one_by_one", "", buckets=BUCKETS, registry=CollectorRegistry())
    for value, count in observations:
        observe_many(many, value, count)
        for _ in range(count):
            one_by_one.observe(value)
    got = {k.replace("many", "h"): v for k, v in _samples(many).items()}
    want = {k.replace("one_by_one", "h"): v for k, v in _samples(one_by_one).items()}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
