"""The ``--wait`` progress bar."""

from __future__ import annotations

import io
from typing import Any

from nova_ipmigrate.osc.progress import ProgressBar, describe


def _op(pct: float, state: str = "running", **kw: Any) -> dict[str, Any]:
    return {"id": "op-1", "kind": "partial_migration", "state": state, "step": "copy",
            "source_host": "h2", "dest_host": "h4",
            "progress": {"percent": pct, "pages_done": int(pct), "pages_total": 100}, **kw}


def test_a_log_gets_one_line_per_ten_percent_and_per_state() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, tty=False)
    for pct in (0, 1, 5, 12, 13, 55, 99.9):
        bar(_op(pct))
    bar(_op(100, "done", step=None))
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split("]")[1].split("%")[0].strip() for line in lines] == [
        "0.0", "12.0", "55.0", "99.9", "100.0"]
    assert lines[1].startswith("[###.......") and "12/100 pages" in lines[1]
    assert lines[-1].startswith("[" + "#" * 30 + "]") and lines[-1].endswith(
        "partial_migration h2 -> h4 done 100/100 pages")


def test_a_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, tty=True)
    bar(_op(10))
    bar(_op(11))
    bar.close()
    text = out.getvalue()
    assert text.count("\r\033[K") == 2 and text.endswith("\n") and text.count("\n") == 1


def test_descriptions() -> None:
    assert describe(_op(5, dest_host=None)) == (
        "partial_migration h2 -> (scheduler) running copy 5/100 pages")
    assert describe({"kind": "reintegration", "state": "queued", "progress": {}}) == (
        "reintegration queued")
    assert describe({"kind": "reintegration", "state": "running", "dest_host": "h1",
                     "progress": {}}) == "reintegration -> h1 running"
    assert describe({"kind": "host_drain", "state": "running", "source_host": "h3",
                     "step": "waiting", "progress": {}}) == "host_drain h3 running waiting"
    out = io.StringIO()
    ProgressBar(out, tty=False)({"kind": "split", "state": "running",
                                 "progress": {"percent": "bad"}})
    assert "0.0%" in out.getvalue()
