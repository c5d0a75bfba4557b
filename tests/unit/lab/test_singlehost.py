"""Parameters and the summary of a single-host run (no QEMU)."""

from __future__ import annotations

from pathlib import Path

from nova_ipmigrate.lab.singlehost import RunResult, SingleHostParams


def test_limit_is_page_aligned_and_oracle_leaves_room_for_the_kernel() -> None:
    p = SingleHostParams(workdir=Path("w"), cache_dir=Path("c"), ram_mb=257,
                         resident_limit_pct=25)
    assert p.limit_bytes % 4096 == 0 and p.limit_bytes <= 257 * 2**20 // 4
    assert p.oracle_size_mib == 161
    assert SingleHostParams(workdir=Path("w"), cache_dir=Path("c"),
                            resident_limit_pct=0).limit_bytes == 0


def _result(**kw: object) -> RunResult:
    base: dict[str, object] = dict(
        ram_mb=256, limit_mb=64.0, oracle_mib=160, max_readahead_kb=0,
        block_thp_readahead=True, verdict="oracle: 10 pages verified, 0 mismatches: PASS",
        ok=True, mismatches=0, verified=10, duration_s=1.0, page_ins_per_s=100.0,
        page_outs_per_s=90.0, page_in_p50_us=12.0, page_in_p99_us=50.0, pages_per_read=1.0,
        guest_pages_per_s=1000.0, max_rss_kb=65000, mean_rss_kb=60000.0, rss_limit_kb=65536,
        lost_pages=0, refetched_pages=3, throttled_page_ins=0)
    base.update(kw)
    return RunResult(**base)  # type: ignore[arg-type]


def test_summary_names_the_figures_and_the_verdict() -> None:
    text = _result(reclaim={"t": 20.0, "before": 2**27, "after": 2**26, "freed": 2**26}).summary()
    assert "page-in latency p50 12 us   p99 50 us" in text
    assert "limit 64 MiB" in text and "PASS" in text and "forced memcg reclaim" in text
    assert "(limit none)" in _result(rss_limit_kb=0, page_in_p50_us=None).summary()


def test_to_dict_is_json_ready() -> None:
    import json
    assert json.loads(json.dumps(_result().to_dict()))["mismatches"] == 0
