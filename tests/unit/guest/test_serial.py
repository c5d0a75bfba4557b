"""Parsing of the oracle's serial console output (OracleMonitor)."""

from __future__ import annotations

import threading
from pathlib import Path

from nova_ipmigrate.guest.serial import OracleMonitor

GOOD_RUN = """\
[    0.000000] Linux version 6.1.0-56-amd64
ORACLE INIT kernel=6.1.0-56-amd64
ORACLE START mib=160 pages=40960 seconds=20
ORACLE FILLED t=0.774
ORACLE PROGRESS t=5.774 verified=1134624 rate=226923 mismatches=0 sweeps=0
ORACLE SWEEP t=10.867 pages=40960 mismatches=0
ORACLE PROGRESS t=10.774 verified=2431552 rate=259384 mismatches=0 sweeps=1
ORACLE SWEEP t=20.882 pages=40960 mismatches=0
ORACLE DONE verified=4784608 mismatches=0 sweeps=2
ORACLE EXIT rc=0
[   23.117711] reboot: Power down
"""


def _monitor(tmp_path: Path, text: str | bytes) -> OracleMonitor:
    log = tmp_path / "serial.log"
    log.write_bytes(text.encode() if isinstance(text, str) else text)
    mon = OracleMonitor(log)
    mon.update()
    return mon


def test_good_run(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, GOOD_RUN)
    assert mon.started and mon.filled and mon.done
    assert mon.pages == 40960
    assert mon.verified == 4784608
    assert mon.mismatches == 0
    assert mon.sweeps == 2
    assert mon.sweep_mismatches == 0
    assert [p.verified for p in mon.progress] == [1134624, 2431552]
    assert mon.progress[0].t == 5.774
    assert mon.last_rate == 259384
    assert mon.exit_code == 0
    assert not mon.kernel_panic
    verdict = mon.verdict()
    assert verdict.ok
    assert verdict.text == "oracle: 4784608 pages verified, 0 mismatches, 2 sweeps: PASS"


def test_mismatch_lines_counted_beyond_reported_total(tmp_path: Path) -> None:
    lines = [
        "ORACLE START mib=8 pages=2048 seconds=5",
        "ORACLE FILLED t=0.1",
        *[f"ORACLE MISMATCH page={i} gpa=0x1234000 gen=3 word=0 got=0x00 want=0x0123456789abcdef"
          for i in range(3)],
        # progress line printed before the later mismatches were found
        "ORACLE PROGRESS t=5.0 verified=100 rate=20 mismatches=1 sweeps=0",
    ]
    mon = _monitor(tmp_path, "\n".join(lines) + "\n")
    assert mon.mismatches == 3
    assert len(mon.mismatch_lines) == 3
    assert mon.mismatch_lines[0].startswith("ORACLE MISMATCH page=0 ")
    verdict = mon.verdict()
    assert not verdict.ok
    assert "not finished" in verdict.text and verdict.text.endswith("FAIL")


def test_reported_total_beats_rate_limited_lines(tmp_path: Path) -> None:
    text = ("ORACLE MISMATCH page=7 gpa=0x0 gen=1 word=3 got=0x1 want=0x2\n"
            "ORACLE SWEEP t=3.0 pages=2048 mismatches=40\n"
            "ORACLE DONE verified=5000 mismatches=41 sweeps=1\n")
    mon = _monitor(tmp_path, text)
    assert mon.mismatches == 41
    assert mon.sweep_mismatches == 40
    assert mon.done and not mon.verdict().ok


def test_partial_lines_and_garbage(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\xff\xfe\x00garbage\r\nORACLE START mib=4 pages=1024 sec")
    mon = OracleMonitor(log)
    mon.update()
    assert not mon.started  # line not complete yet
    with open(log, "ab") as f:
        f.write(b"onds=0\r\nORACLE PROGRESS t=x verified=?? rate=1 mismatches=0\n")
        f.write(b"\x1b[0mjunk ORACLE DONE verified=10 mismatches=0 sweeps=1\nORACLE\n")
    mon.update()
    assert mon.started and mon.pages == 1024
    assert mon.progress == []  # unparsable progress line ignored
    assert mon.done and mon.verified == 10  # ORACLE text after kernel noise is found
    assert mon.verdict().ok


def test_panic_detection(tmp_path: Path) -> None:
    text = GOOD_RUN.replace(
        "ORACLE DONE", "[   12.5] BUG: Bad page map in process oracle\nORACLE DONE")
    mon = _monitor(tmp_path, text)
    assert mon.kernel_panic
    v = mon.verdict()
    assert not v.ok and v.kernel_panic and "guest kernel failure" in v.text
    for marker in ("Kernel panic - not syncing: Fatal exception",
                   "mm/pgtable-generic.c:53: bad pmd 00000000(000000)",
                   "general protection fault, probably for non-canonical address"):
        mon = OracleMonitor(tmp_path / "none")
        mon.feed_line(marker)
        assert mon.kernel_panic, marker


def test_missing_file_and_never_started(tmp_path: Path) -> None:
    mon = OracleMonitor(tmp_path / "missing.log")
    assert mon.update() == 0
    v = mon.verdict()
    assert not v.ok and "never started" in v.text


def test_truncated_log_restarts(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, GOOD_RUN)
    assert mon.done
    (tmp_path / "serial.log").write_text("ORACLE START mib=1 pages=256 seconds=1\n")
    mon.update()
    assert mon.pages == 256


def test_wait_for(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("ORACLE START mib=1 pages=256 seconds=1\n")
    mon = OracleMonitor(log)

    def finish() -> None:
        with open(log, "a") as f:
            f.write("ORACLE DONE verified=5 mismatches=0 sweeps=1\n")

    timer = threading.Timer(0.2, finish)
    timer.start()
    polls: list[int] = []
    try:
        assert mon.wait_for(lambda m: m.done, timeout=5, on_poll=lambda m: polls.append(1),
                            interval=0.02)
    finally:
        timer.cancel()
    assert polls
    assert not mon.wait_for(lambda m: m.sweeps > 5, timeout=0.1, interval=0.02)
