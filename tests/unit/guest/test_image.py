"""Guest image pieces that need neither root nor QEMU: cpio, cmdline, oracle."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nova_ipmigrate.guest import image
from nova_ipmigrate.guest.image import CpioEntry, kernel_cmdline, parse_cpio, write_cpio
from nova_ipmigrate.guest.serial import OracleMonitor


def _sample_entries() -> list[CpioEntry]:
    return [
        CpioEntry("bin", 0o040755),
        CpioEntry("bin/busybox", 0o100755, b"\x7fELF" + bytes(range(256)) * 3),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("init", 0o100755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("odd", 0o100644, b"x"),  # sizes that need padding
    ]


def test_cpio_round_trip() -> None:
    buf = io.BytesIO()
    write_cpio(_sample_entries(), buf)
    blob = buf.getvalue()
    assert blob.startswith(b"070701")
    assert len(blob) % 4 == 0
    assert b"TRAILER!!!" in blob
    assert parse_cpio(blob) == _sample_entries()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio tool not installed")
def test_cpio_tool_reads_archive() -> None:
    buf = io.BytesIO()
    write_cpio(_sample_entries(), buf)
    res = subprocess.run(["cpio", "-t", "-v"], input=buf.getvalue(), capture_output=True,
                         check=True)
    listing = res.stdout.decode()
    for name in ("bin/busybox", "bin/sh -> busybox", "dev/console", "init"):
        assert name in listing


def test_build_initramfs(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"BUSYBOX")
    oracle = tmp_path / "oracle"
    oracle.write_bytes(b"ORACLE")
    entries = {e.name: e for e in parse_cpio(gzip.decompress(
        image.build_initramfs(oracle, busybox)))}
    assert entries["bin/busybox"].data == b"BUSYBOX"
    assert entries["oracle"].data == b"ORACLE" and entries["oracle"].mode == 0o100755
    assert entries["init"].data.decode() == image.INIT_SCRIPT
    assert entries["dev/console"].rdev == (5, 1)
    for applet in ("sh", "mount", "poweroff", "cat", "sleep"):
        assert entries[f"bin/{applet}"].data == b"busybox"
    # Reproducible: same input, same bytes (cache keys rely on it).
    assert image.build_initramfs(oracle, busybox) == image.build_initramfs(oracle, busybox)


def test_init_script_powers_off_after_oracle() -> None:
    script = image.INIT_SCRIPT
    assert script.startswith("#!/bin/sh\n")
    assert script.index("/oracle") < script.index("poweroff -f")
    assert "devtmpfs" in script and "/dev/console" in script


def test_kernel_cmdline() -> None:
    line = kernel_cmdline(160, 20)
    assert line.split()[:3] == ["console=ttyS0", "quiet", "panic=-1"]
    for part in ("oracle.mib=160", "oracle.seconds=20", "oracle.report=5",
                 "oracle.sweep=30", "oracle.hot=0", "oracle.hotpct=10", "oracle.rate=0"):
        assert part in line.split()
    line = kernel_cmdline(64, 0, 2, 10, hot_percent=90, hot_set_percent=20,
                          extra=" loglevel=7 ", rate_mibps=50)
    assert "oracle.hot=90" in line and "oracle.hotpct=20" in line
    assert "oracle.rate=50" in line and line.endswith("loglevel=7")
    with pytest.raises(ValueError):
        kernel_cmdline(-1, 0)
    with pytest.raises(ValueError):
        kernel_cmdline(64, 0, hot_percent=101)


def test_is_static_elf(tmp_path: Path) -> None:
    assert not image.is_static_elf(Path(sys.executable).resolve())  # dynamic python
    not_elf = tmp_path / "x"
    not_elf.write_bytes(b"#!/bin/sh\n")
    assert not image.is_static_elf(not_elf)


def test_find_busybox_errors_explain_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    monkeypatch.setattr(image.Path, "is_file", lambda self: False)
    with pytest.raises(image.GuestImageError, match="apt-get install busybox-static"):
        image.find_static_busybox()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_oracle_runs_on_host(tmp_path: Path) -> None:
    """The oracle itself, natively: arguments replace /proc/cmdline."""
    binary = image.compile_oracle(tmp_path)
    assert image.is_static_elf(binary)
    assert image.compile_oracle(tmp_path) == binary  # cached
    res = subprocess.run([str(binary), "oracle.mib=4", "oracle.seconds=2", "oracle.report=1",
                          "oracle.sweep=1", "oracle.hot=80", "oracle.hotpct=5",
                          "oracle.rate=20"],
                         capture_output=True, timeout=60, check=False)
    log = tmp_path / "out.log"
    log.write_bytes(res.stdout)
    mon = OracleMonitor(log)
    mon.update()
    assert res.returncode == 0, res.stdout.decode()
    assert mon.pages == 1024
    assert mon.done and mon.verdict().ok, mon.verdict().text
    assert mon.sweeps >= 2 and mon.progress
    # 20 MiB/s of rewrites = 5120 pages/s, each verified first: far below
    # the unthrottled rate, so the throttle works.
    assert mon.progress[0].rate < 20000
