"""Progress lines and the printer of long operations (``lab.progress``)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from nova_ipmigrate.lab import progress
from nova_ipmigrate.lab.progress import MIB, ProgressPrinter, format_progress


def op(state: str = "running", done: int = 0, total: int = 4 * MIB, **extra: Any
       ) -> dict[str, Any]:
    pr = {"bytes_total": total, "bytes_done": done, "rate_bytes_s": 2 * MIB, "eta_s": 1.5,
          "resent": 3, "invalidated": 7}
    return {"id": "h1-1", "kind": "partial_migration", "source": "h2", "dest": "h4",
            "state": state, "fault": extra.pop("fault", None), "progress": pr, **extra}


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty
        self.flushes = 0

    def isatty(self) -> bool:
        return self._tty

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_a_line_says_what_where_how_far_and_how_fast() -> None:
    line = format_progress(op(done=MIB), width=8)
    assert line.startswith("partial migration h2 -> h4 [##------]  25.0% ")
    assert "    1.0/4.0 MiB    2.0 MiB/s ETA  1.5s re-sent 3 invalidated 7" in line
    assert "RUNNING" not in line


def test_an_ended_operation_says_how_it_ended() -> None:
    assert format_progress(op("done", 4 * MIB)).endswith("  DONE")
    line = format_progress(op("failed", MIB, fault="h2: copy failed"))
    assert line.endswith("  FAILED: h2: copy failed")


def test_a_reintegration_comes_from_all_holders() -> None:
    line = format_progress(op(kind="reintegration", source=None, dest="h1"))
    assert line.startswith("reintegration all -> h1 [")


def test_nothing_to_move_is_full_once_done_and_empty_before() -> None:
    assert "[" + "#" * 10 + "] 100.0%" in format_progress(op("done", 0, 0), width=10)
    assert "[" + "-" * 10 + "]   0.0%" in format_progress(op("running", 0, 0), width=10)


def test_more_done_than_total_is_capped() -> None:
    line = format_progress(op(done=9 * MIB), width=4)
    assert "[####] 100.0%" in line and "4.0/4.0 MiB" in line


def test_a_bare_reply_is_formatted_too() -> None:
    line = format_progress({})
    assert line.startswith("operation all -> None [") and "0.0%" in line


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    s = Stream(tty=True)
    p = ProgressPrinter(s, interval=3600)
    assert p.tty
    p.update(op(done=MIB))
    p.update(op(done=2 * MIB))
    p.update(op("done", 4 * MIB))
    out = s.getvalue()
    assert out.count("\r\033[K") == 3 and out.count("\n") == 1 and out.endswith("DONE\n")
    assert s.flushes == 3


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_elsewhere_a_line_every_interval_and_the_last_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(1000.0)
    monkeypatch.setattr(progress, "time", clock)
    s = Stream(tty=False)
    p = ProgressPrinter(s, interval=2.0)
    assert not p.tty
    p.update(op(done=MIB))          # the first one is printed
    clock.now += 1.0
    p.update(op(done=2 * MIB))      # within the interval: not
    clock.now += 1.5
    p.update(op(done=3 * MIB))      # 2.5 s after the last one printed
    p.update(op("aborted", 3 * MIB, fault="aborted by request"))  # the end always
    lines = s.getvalue().splitlines()
    assert "\r" not in s.getvalue()
    assert len(lines) == 3, lines
    assert "25.0%" in lines[0] and "75.0%" in lines[1]
    assert lines[2].endswith("ABORTED: aborted by request")


def test_elsewhere_with_no_interval_every_update_is_printed() -> None:
    s = Stream(tty=False)
    p = ProgressPrinter(s, interval=0)
    for i in range(3):
        p.update(op(done=i * MIB))
    assert len(s.getvalue().splitlines()) == 3


def test_the_default_stream_is_stdout(capsys: Any) -> None:
    p = ProgressPrinter()
    p.update(op("done", 4 * MIB))
    assert capsys.readouterr().out.rstrip("\n").endswith("DONE")
