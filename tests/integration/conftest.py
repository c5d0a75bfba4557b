"""Shared fixtures of the integration tests (root, real FUSE, QEMU)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: CI sets IPMIGRATE_QUICK=1: shorter runs where the issue allows it
QUICK = os.environ.get("IPMIGRATE_QUICK", "0") == "1"
#: a guest stand-in: maps a RAM file, writes and verifies its pages (``mmap_worker.py``)
WORKER = Path(__file__).with_name("mmap_worker.py")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, a ``kill``) interrupts the run as Ctrl-C does, so the
    tests' ``finally`` blocks and fixtures still take down the labs, mounts, QEMUs
    and daemons they started (the default action would leave them all behind)."""
    signal.signal(signal.SIGTERM, _terminate)


def start_worker(path: Path, size: int, seconds: float) -> subprocess.Popen[str]:
    """The guest stand-in on ``path`` for ``seconds``; it prints ``mismatches N``."""
    return subprocess.Popen([sys.executable, str(WORKER), str(path), str(size), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def mmap_worker(path: Path, size: int, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """:func:`start_worker`, killed on the way out if it still runs."""
    w = start_worker(path, size, seconds)
    try:
        yield w
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()


def cache_dir() -> Path:
    return Path(os.environ.get("IPMIGRATE_CACHE_DIR", REPO / ".state" / "cache"))


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount(2) of /dev/fuse, memory cgroups)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")


@pytest.fixture
def workdir(root: None) -> Iterator[Path]:
    # Not under /tmp's pytest dirs: mountpoints inside must not be walked by cleanup.
    path = Path(tempfile.mkdtemp(prefix="ipm-it-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
