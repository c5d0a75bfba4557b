"""Tests of the log-linear latency histograms."""

from __future__ import annotations

import math
import random

import pytest

from nova_ipmigrate.memfs.metrics import NBUCKETS, LatencyHistogram


def hist(values_us: list[int]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values_us:
        h.record_ns(v * 1000)
    return h


def pct(h: LatencyHistogram, q: float) -> float:
    got = h.percentile_us(q)
    assert got is not None
    return got


def true_quantile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def test_empty_is_none() -> None:
    h = LatencyHistogram()
    assert h.total == 0
    assert h.percentile_us(0.5) is None
    assert h.summary() == {"count": 0, "p50_us": None, "p99_us": None, "max_us": None}
    assert len(h.counts) == NBUCKETS


@pytest.mark.parametrize("dist", ["uniform", "exponential", "lognormal", "constant", "pow2"])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_percentiles_are_close_upper_bounds(dist: str, q: float) -> None:
    rng = random.Random(dist)
    if dist == "uniform":
        values = [rng.randint(1, 100_000) for _ in range(5000)]
    elif dist == "exponential":
        values = [1 + int(rng.expovariate(1 / 200)) for _ in range(5000)]
    elif dist == "lognormal":
        values = [1 + int(rng.lognormvariate(5, 2)) for _ in range(5000)]
    elif dist == "constant":
        values = [37] * 100
    else:
        values = [2**rng.randint(0, 30) for _ in range(2000)]
    h = hist(values)
    assert h.total == len(values)
    true = true_quantile(values, q)
    got = h.percentile_us(q)
    assert got is not None
    assert true <= got <= true * 1.125, (true, got)


@pytest.mark.parametrize("us", [1, 2, 3, 7, 8, 9, 15, 100, 1023, 1024, 1025, 10**6, 10**9])
def test_single_value_bound(us: int) -> None:
    got = pct(hist([us]), 0.5)
    assert us < got <= us * 1.125


def test_sub_microsecond_values() -> None:
    h = LatencyHistogram()
    h.record_ns(0)
    h.record_ns(999)
    assert h.counts[0] == 2
    assert pct(h, 1.0) == 1.0


def test_huge_values_land_in_the_last_bucket() -> None:
    h = LatencyHistogram()
    h.record_ns(10**30)
    assert h.counts[NBUCKETS - 1] == 1
    assert h.percentile_us(0.5) is not None


def test_summary() -> None:
    values = list(range(1, 1001))
    s = hist(values).summary()
    assert s["count"] == 1000
    p50, p99, top = s["p50_us"], s["p99_us"], s["max_us"]
    assert p50 is not None and p99 is not None and top is not None
    assert 500 <= p50 <= 500 * 1.125
    assert 990 <= p99 <= 990 * 1.125
    assert 1000 <= top <= 1000 * 1.125


def test_snapshot_is_a_copy() -> None:
    h = hist([10, 20])
    snap = h.snapshot()
    h.record_ns(30_000)
    assert snap.total == 2 and h.total == 3


def test_subtraction_gives_the_interval() -> None:
    h = hist([1000] * 50)
    before = h.snapshot()
    for _ in range(10):
        h.record_ns(5_000)
    interval = h.snapshot() - before
    assert interval.total == 10
    assert 5 <= pct(interval, 0.0) <= 5 * 1.125
    assert 5 <= pct(interval, 1.0) <= 5 * 1.125
    # the cumulative figures still include the old values
    assert pct(h, 0.5) >= 1000
    assert (h.snapshot() - h.snapshot()).percentile_us(0.5) is None


def test_subtraction_counts_per_bucket() -> None:
    a = hist([1, 2, 3, 100])
    b = a.snapshot()
    for v in (2, 100, 100):
        b.record_ns(v * 1000)
    d = b - a
    assert d.total == 3
    assert sum(1 for c in d.counts if c) == 2
    assert all(c >= 0 for c in d.counts)
