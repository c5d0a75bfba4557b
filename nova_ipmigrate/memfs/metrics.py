"""Latency histograms for memfs: page-in service time, notify time.

Log-linear buckets (8 per power of two) of microseconds: recording is one
list increment, percentiles come from cumulative snapshots, and the difference
of two snapshots gives the figures of an interval.
"""

from __future__ import annotations

SUB = 8
NBUCKETS = 40 * SUB


def _bucket(us: float) -> int:
    if us < 1:
        return 0
    e = int(us).bit_length() - 1
    frac = int((us / (1 << e) - 1.0) * SUB)
    return min(1 + e * SUB + frac, NBUCKETS - 1)


def _bucket_upper(b: int) -> float:
    if b == 0:
        return 1.0
    e, frac = divmod(b - 1, SUB)
    return (1 << e) * (1.0 + (frac + 1) / SUB)


class LatencyHistogram:
    """Counts of durations; safe to record from several threads under the GIL."""

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = counts if counts is not None else [0] * NBUCKETS

    def record_ns(self, ns: int) -> None:
        self.counts[_bucket(ns / 1000.0)] += 1

    def snapshot(self) -> LatencyHistogram:
        return LatencyHistogram(list(self.counts))

    def __sub__(self, older: LatencyHistogram) -> LatencyHistogram:
        return LatencyHistogram([a - b for a, b in zip(self.counts, older.counts, strict=True)])

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile_us(self, q: float) -> float | None:
        """Upper bound (µs) of the bucket holding quantile ``q`` (0..1)."""
        total = self.total
        if not total:
            return None
        rank = q * total
        seen = 0
        for b, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return _bucket_upper(b)
        return _bucket_upper(NBUCKETS - 1)

    def summary(self) -> dict[str, float | int | None]:
        return {"count": self.total, "p50_us": self.percentile_us(0.5),
                "p99_us": self.percentile_us(0.99), "max_us": self.percentile_us(1.0)}
