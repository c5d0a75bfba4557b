"""Shared fixtures of the integration tests (root, real FUSE, QEMU)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: CI sets IPMIGRATE_QUICK=1: shorter runs where the issue allows it
QUICK = os.environ.get("IPMIGRATE_QUICK", "0") == "1"


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
