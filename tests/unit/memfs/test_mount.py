"""Kernel knobs around a mount, against fake sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova_ipmigrate.memfs import mount as mnt


def test_tune_bdi_writes_and_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = (0 << 8) | 45
    bdi = tmp_path / "0:45"
    bdi.mkdir()
    (bdi / "strict_limit").write_text("1\n")
    (bdi / "max_ratio").write_text("1\n")
    monkeypatch.setattr(mnt, "BDI_ROOT", tmp_path)
    assert mnt.tune_bdi(dev) == {"strict_limit": "0", "max_ratio": "100"}


def test_tune_bdi_reports_missing_knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnt, "BDI_ROOT", tmp_path)
    assert mnt.tune_bdi(5) == {"strict_limit": "unavailable", "max_ratio": "unavailable"}


def test_abort_connection_writes_fusectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "39").mkdir()
    (tmp_path / "39" / "abort").write_text("")
    monkeypatch.setattr(mnt, "FUSECTL_ROOT", tmp_path)
    assert mnt.abort_connection(39)
    assert (tmp_path / "39" / "abort").read_text() == "1"
    assert not mnt.abort_connection(40)


def test_mount_refuses_a_missing_mountpoint(tmp_path: Path) -> None:
    with pytest.raises(mnt.MountError, match="not a directory"):
        mnt.mount_fuse(tmp_path / "missing")
