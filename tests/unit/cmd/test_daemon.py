"""The daemons' shared run loop."""

from __future__ import annotations

import threading

import pytest

from nova_ipmigrate.cmd.daemon import serve


def test_serves_until_done_and_always_stops(capsys: pytest.CaptureFixture[str]) -> None:
    done, stopped = threading.Event(), []
    done.set()
    assert serve("x", lambda: "ready", lambda: stopped.append(1), done) == 0
    assert stopped == [1] and "ready" in capsys.readouterr().out


def test_start_failure_is_reported_and_still_stops(capsys: pytest.CaptureFixture[str]) -> None:
    stopped: list[int] = []

    def start() -> str:
        raise OSError(19, "no /dev/fuse")

    assert serve("ipm", start, lambda: stopped.append(1), threading.Event()) == 1
    assert stopped == [1] and "ipm: [Errno 19] no /dev/fuse" in capsys.readouterr().err
