"""The pure parts of the migration benchmark: ratios, guest-progress windows, the
result and its summary (no lab, no root)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.bench import migration as m
from nova_ipmigrate.cmd import bench

MIB = 2**20
ORACLE_OK = {"verdict": "oracle: 100 pages verified, 0 mismatches, 1 sweeps: PASS",
             "ok": True, "mismatches": 0, "verified": 100, "duration_s": 90.0}


def test_ratio_and_missing_values() -> None:
    assert m.ratio(3, 2) == 1.5
    assert m.ratio(None, 2) is None
    assert m.ratio(3, None) is None
    assert m.ratio(3, 0) is None


def test_time_vs_ideal() -> None:
    # 100 MiB at 50 MiB/s is 2 s ideally; 2.2 s measured
    assert m.time_vs_ideal(2.2, 100 * MIB, 50 * MIB) == pytest.approx(1.1)
    assert m.time_vs_ideal(2.2, 100 * MIB, None) is None
    assert m.time_vs_ideal(2.2, 0, 50 * MIB) is None


def test_speedup_is_per_byte() -> None:
    # naive: 10 s for 200 MiB (0.05 s/MiB); IPmigrate: 2 s for 100 MiB (0.02 s/MiB)
    assert m.speedup_per_byte(10, 200 * MIB, 2, 100 * MIB) == pytest.approx(2.5)
    assert m.speedup_per_byte(10, 200 * MIB, None, 100 * MIB) is None


def test_oracle_leaves_the_guest_kernel_room() -> None:
    assert m.oracle_mib(512) == 410
    assert m.oracle_mib(1024) == 820


def test_meets_both_directions() -> None:
    assert m.meets(1.05, ("<=", 1.10)) == "PASS"
    assert m.meets(1.2, ("<=", 1.10)) == "BELOW"
    assert m.meets(2.0, (">=", 2.0)) == "PASS"
    assert m.meets(0.5, (">=", 0.8)) == "BELOW"
    assert m.meets(None, (">=", 0.8)) == "n/a"


SAMPLES = [(0.0, 0), (1.0, 1000), (2.0, 2000), (3.0, 2500), (4.0, 3000), (6.0, 5000)]


def test_verified_at_interpolates_between_samples() -> None:
    assert m.verified_at(SAMPLES, 1.0) == 1000
    assert m.verified_at(SAMPLES, 2.5) == pytest.approx(2250)
    assert m.verified_at(SAMPLES, 5.0) == pytest.approx(4000)
    assert m.verified_at(SAMPLES, -0.1) is None
    assert m.verified_at(SAMPLES, 6.1) is None
    assert m.verified_at([], 1.0) is None


def test_window_rate() -> None:
    w = m.window_rate(SAMPLES, 0.0, 2.0)
    assert w["pages_per_s"] == 1000 and w["pages_verified"] == 2000 and not w["widened"]
    assert m.window_rate(SAMPLES, 2.0, 4.0)["pages_per_s"] == 500


def test_short_window_is_widened_around_its_centre() -> None:
    w = m.window_rate(SAMPLES, 2.9, 3.1, min_s=2.0)
    assert w["widened"]
    assert (w["start"], w["end"], w["seconds"]) == (2.0, 4.0, 2.0)
    assert w["pages_per_s"] == 500
    assert not m.window_rate(SAMPLES, 1.0, 4.0, min_s=2.0)["widened"]


def test_window_outside_the_samples_has_no_rate() -> None:
    w = m.window_rate(SAMPLES, 5.0, 7.0)
    assert w["pages_per_s"] is None and w["pages_verified"] is None


def _raw() -> dict[str, Any]:
    """What the scenario records, for a run where every step worked."""
    samples = [(float(t), 1000 * t) for t in range(0, 61)]
    # the guest slows to half during the naive gather (t 30..40)
    samples = [(t, int(v if t <= 30 else (30_000 + (t - 30) * 500 if t <= 40
                                           else 35_000 + (t - 40) * 1000)))
               for t, v in samples]

    def op(name: str, window: tuple[float, float], seconds: float, **more: Any) -> dict[str, Any]:
        return {"id": name, "state": "done", "fault": None, "seconds": seconds,
                "resent": 7, "invalidated": 3, "window": list(window), **more}

    return {
        "hosts": {"h1": "ipmb1-h1", "h2": "ipmb1-h2", "h3": "ipmb1-h3", "h4": "ipmb1-h4"},
        "tcp": {"h2_h4": {"bytes": 250 * MIB, "seconds": 2.0, "bytes_per_s": 100 * MIB,
                          "mbit_per_s": 838.9},
                "h4_h1": {"bytes": 200 * MIB, "seconds": 2.0, "bytes_per_s": 100 * MIB,
                          "mbit_per_s": 838.9}},
        "before_window": [10.0, 18.0],
        "ops": {
            "b2_ipmigrate": op("b2_ipmigrate", (20.0, 22.0), 2.2, part_bytes=200 * MIB,
                               dest_fabric_bytes_in=202 * MIB),
            "b2_naive": op("b2_naive", (30.0, 40.0), 10.0, part_bytes=200 * MIB),
            "b3_ipmigrate": op("b3_ipmigrate", (42.0, 42.5), 4.0, bytes_moved=400 * MIB),
            "b3_naive": op("b3_naive", (50.0, 54.0), 4.4, bytes_moved=400 * MIB),
        },
        "resplit": {"pages_to_move": 100_000, "drained": True, "stored_left": 12,
                    "seconds": 5.0},
        "skipped": [], "error": None,
        "guest_samples": samples,
    }


def test_figures_from_a_recorded_run() -> None:
    fig = m.figures(_raw())
    r = fig["ratios"]
    assert set(r) == set(m.TARGETS)
    assert r["b2_time_vs_ideal"] == pytest.approx(1.1)        # 2.2 s / (200 MiB / 100 MiB/s)
    assert r["b2_bytes_vs_part"] == pytest.approx(1.01)
    assert r["b2_speedup_vs_naive"] == pytest.approx(10 / 2.2, abs=1e-3)
    assert r["b3_time_vs_ideal"] == pytest.approx(1.0)        # 4 s / (400 MiB / 100 MiB/s)
    assert r["b3_speedup_vs_naive"] == pytest.approx(1.1)
    assert fig["b6"]["before"]["pages_per_s"] == 1000
    assert r["b6_b2_ipmigrate_during_vs_before"] == pytest.approx(1.0)
    assert r["b6_b2_naive_during_vs_before"] == pytest.approx(0.5)
    short = fig["b6"]["during"]["b3_ipmigrate"]
    assert short["widened"] and short["seconds"] == 2.0


def test_figures_with_missing_steps_are_none() -> None:
    raw = _raw()
    del raw["ops"]["b2_naive"], raw["tcp"]["h4_h1"]
    r = m.figures(raw)["ratios"]
    assert r["b2_speedup_vs_naive"] is None and r["b3_time_vs_ideal"] is None
    assert r["b6_b2_naive_during_vs_before"] is None
    assert r["b2_time_vs_ideal"] is not None
    assert all(v is None for v in m.figures({})["ratios"].values())


def test_result_ok_and_summary_lines() -> None:
    res = m.build_result(m.Settings.quick(), _raw(), ORACLE_OK, {"pages_by_host": {}})
    assert res["ok"] and res["problems"] == []
    assert res["verdicts"]["b2_time_vs_ideal"] == "PASS"
    assert res["verdicts"]["b3_speedup_vs_naive"] == "BELOW"
    assert res["resent_invalidated"]["b2_ipmigrate"] == {"resent": 7, "invalidated": 3}
    text = m.summary(res)
    assert "512 MiB guest" in text and "links 1gbit" in text
    assert "time/ideal 1.10 (target <= 1.1: PASS)" in text
    assert "B2 bytes at h4 / part bytes: 1.01 (target <= 1.05: PASS)" in text
    assert "speedup per part byte 4.5" in text and "x (target >= 2x: PASS)" in text
    assert "speedup per byte 1.10x (target >= 2x: BELOW); ~1x expected" in text
    assert "during/before 0.50 (target >= 0.8: BELOW)" in text
    assert "window widened to 2 s" in text
    assert "b2_ipmigrate 7/3" in text
    assert "0 mismatches" in text and text.endswith("result: OK")
    # one line per B2/B3 figure and per operation's B6
    assert sum(line.lstrip().startswith("B6 during") for line in text.splitlines()) == 4


def test_result_fails_on_mismatch_or_an_operation_not_done() -> None:
    bad = {**ORACLE_OK, "ok": False, "mismatches": 3}
    assert not m.build_result(m.Settings(), _raw(), bad, {})["ok"]
    raw = _raw()
    raw["ops"]["b3_naive"].update(state="failed", fault="gathering from h4: boom")
    res = m.build_result(m.Settings(), raw, ORACLE_OK, {})
    assert not res["ok"]
    assert res["problems"] == ["b3_naive ended failed: gathering from h4: boom"]
    assert "PROBLEM: b3_naive ended failed" in m.summary(res)
    raw = _raw()
    del raw["ops"]["b3_naive"]
    raw["skipped"] = ["B3 naive"]
    res = m.build_result(m.Settings(), raw, ORACLE_OK, {})
    assert not res["ok"] and "b3_naive ended not run" in res["problems"]
    assert "b3_naive not run" in m.summary(res)


def test_summary_of_an_empty_run() -> None:
    res = m.build_result(m.Settings(link=None), {}, {**ORACLE_OK, "ok": False}, {},
                         ["scenario: boom"])
    text = m.summary(res)
    assert "links unshaped" in text and "n/a" in text and "result: FAILED" in text


def test_guest_sampler_times_new_progress_lines(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("ORACLE START mib=4 pages=1024 seconds=9\n"
                   "ORACLE PROGRESS t=1.0 verified=100 rate=100 mismatches=0 sweeps=0\n")
    now = [100.0]
    sampler = m.GuestSampler(log, clock=lambda: now[0])
    sampler.monitor.update()  # what start() skips: lines that were there already
    sampler._seen = len(sampler.monitor.progress)
    now[0] = 101.0
    with log.open("a") as f:
        f.write("ORACLE PROGRESS t=2.0 verified=250 rate=150 mismatches=0 sweeps=0\n")
    sampler.poll()
    now[0] = 102.5
    sampler.poll()  # nothing new
    with log.open("a") as f:
        f.write("ORACLE PROGRESS t=3.0 verified=300 rate=50 mismatches=0 sweeps=0\n"
                "ORACLE PROGRESS t=4.0 verified=420 rate=120 mismatches=0 sweeps=0\n")
    sampler.poll()
    assert sampler.samples == [(1.0, 250), (2.5, 420)]


def test_cli_registers_the_migration_benchmark() -> None:
    args = bench.build_parser().parse_args(["migration", "--quick", "--link", "none"])
    assert args.run is m.main and args.quick and args.link == "none"
    assert args.ram_mb is None and args.json is None


def test_bad_link_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(link="fast", ram_mb=None, seconds=None, quick=True, json=None,
                              cache_dir=None, workdir=None)
    assert m.main(args) == 2
    assert "--link" in capsys.readouterr().err
