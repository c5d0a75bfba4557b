"""B4's figures from what the two runs recorded (no lab)."""

from __future__ import annotations

from typing import Any

from nova_ipmigrate.bench import mainhost

JOBINFO = """Job type:         Completed
Operation:        Incoming migration
Time elapsed:     34821        ms
Total downtime:   298          ms
Downtime w/o network: 296          ms
"""


def _move(src: str, dest: str, downtime: float, total: float) -> dict[str, Any]:
    return {"source": src, "dest": dest, "moved": True, "state": "done", "fault": None,
            "resident_bytes": 128 * 2**20, "downtime_ms": downtime,
            "libvirt_downtime_ms": downtime + 1, "directory_ms": 7.0, "libvirt_s": 2.4,
            "switched_s": 2.5, "pull_s": 1.2, "pull_bytes": 128 * 2**20, "resent": 0,
            "invalidated": 3, "total_s": total, "time_vs_ideal": total / 1.2,
            "pull_vs_ideal": 1.0}


def test_libvirt_downtime() -> None:
    assert mainhost.libvirt_downtime_ms(JOBINFO) == 298.0
    assert mainhost.libvirt_downtime_ms("error: no job") is None


def test_figures_side_by_side() -> None:
    s = mainhost.Settings.quick()
    plain = {"ok": True, "seconds": 36.0, "downtime_ms": 300.0, "ram_bytes": 512 * 2**20,
             "tcp": {"bytes_per_s": 120_000_000}, "oracle": {"verdict": "PASS"}}
    split = {"moves": [_move("h1", "h4", 20.0, 3.6), _move("h4", "h1", 30.0, 4.8)],
             "oracle": {"ok": True, "mismatches": 0, "verdict": "PASS"}, "problems": []}
    r = mainhost.build_result(s, plain, split)
    assert r["ok"] and r["problems"] == []
    assert r["ratios"]["b4_downtime_ms_p50"] == 25.0
    assert r["verdicts"] == {"b4_downtime_ms_p50": "PASS", "b4_time_vs_ideal": "BELOW"}
    side = r["side_by_side"]
    assert side["split_total_s_p50"] == 4.2 and abs(side["total_split_vs_plain"] - 4.2 / 36) < 1e-9
    assert side["downtime_split_vs_plain"] == 25.0 / 300.0
    assert "side by side" in mainhost.summary(r)


def test_a_failed_move_or_a_mismatch_fails_the_run() -> None:
    s = mainhost.Settings.quick()
    bad = _move("h1", "h4", 20.0, 3.6)
    bad.update(state="failed", fault="libvirt migration failed")
    r = mainhost.build_result(s, {}, {"moves": [bad], "oracle": {"ok": True, "mismatches": 0},
                                      "problems": []})
    assert not r["ok"] and any("libvirt migration failed" in p for p in r["problems"])
    assert any("1 of 2 moves" in p for p in r["problems"])
    r = mainhost.build_result(s, {}, {"moves": [_move("h1", "h4", 20, 3), _move("h4", "h1", 20, 3)],
                                      "oracle": {"ok": False, "mismatches": 3}, "problems": []})
    assert not r["ok"]
