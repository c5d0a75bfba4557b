"""The RAM file's directory gate (main-host move: READs wait for the directory)."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from nova_ipmigrate.memfs.ramfile import DirectoryGate


def test_the_first_reader_fetches_and_the_others_wait() -> None:
    calls: list[float] = []
    release = threading.Event()

    def fetch() -> None:
        calls.append(time.monotonic())
        release.wait(5)

    gate = DirectoryGate(fetch, timeout=5)
    done: list[bool] = []
    readers = [threading.Thread(target=lambda: (gate.wait(), done.append(True)))
               for _ in range(4)]
    for r in readers:
        r.start()
    time.sleep(0.1)
    assert len(calls) == 1 and not done and not gate.done
    release.set()
    for r in readers:
        r.join(5)
    assert done == [True] * 4 and gate.done and gate.fetched_at is not None
    gate.wait()                      # later READs pass at once
    assert len(calls) == 1


def test_a_failed_fetch_fails_every_reader_with_eio() -> None:
    def fetch() -> None:
        raise RuntimeError("the old main host is not paused")

    gate = DirectoryGate(fetch, timeout=5)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            gate.wait()
        assert info.value.errno == errno.EIO and "not paused" in str(info.value)


def test_a_reader_gives_up_after_the_timeout() -> None:
    hold = threading.Event()
    gate = DirectoryGate(lambda: hold.wait(5), timeout=0.2)
    t = threading.Thread(target=gate.wait)
    t.start()
    time.sleep(0.05)
    with pytest.raises(OSError) as info:
        gate.wait()
    assert info.value.errno == errno.ETIMEDOUT
    hold.set()
    t.join(5)
