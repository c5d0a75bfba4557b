"""The oracle guest boots under QEMU and tells good memory from bad.

Boots the real guest image (Debian kernel + busybox initramfs + oracle) with
its RAM in a shared plain file on /dev/shm (no FUSE): a clean run must end
with ORACLE DONE and 0 mismatches, and corrupting the RAM file from the host
while the guest runs must be reported as mismatches at the right addresses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_ipmigrate.guest.image import GuestImage, ensure_guest_image, kernel_cmdline
from nova_ipmigrate.guest.serial import OracleMonitor
from nova_ipmigrate.qemu.memcg import CgroupError, MemoryCgroup
from nova_ipmigrate.qemu.runner import QemuConfig, QemuError, QemuProcess
from nova_ipmigrate.qemu.shim import ensure_nohuge_shim

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
ACCEL = os.environ.get("IPMIGRATE_ACCEL", "tcg")
RAM_MB = 256
PAGE = 4096
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
C1, C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _cache_dir() -> Path:
    return Path(os.environ.get("IPMIGRATE_CACHE_DIR", REPO / ".state" / "cache"))


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU with memory cgroups, /dev/shm RAM files)")
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (apt-get install qemu-system-x86)")
    return ensure_guest_image(_cache_dir())


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    # Guest RAM must be on tmpfs: a disk-backed file would be written back.
    path = Path(tempfile.mkdtemp(prefix="ipm-oracle-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _config(image: GuestImage, run_dir: Path, append: str,
            memcg: MemoryCgroup | None = None) -> QemuConfig:
    return QemuConfig(
        ram_mb=RAM_MB, ram_path=run_dir / "guest.ram", kernel=image.kernel,
        initrd=image.initrd, append=append, serial_log=run_dir / "serial.log",
        qmp_socket=run_dir / "qmp.sock", accel=ACCEL,
        shim_path=ensure_nohuge_shim(_cache_dir()), memcg=memcg)


def _watch(proc: QemuProcess, mon: OracleMonitor) -> None:
    """on_poll: fail fast, with the console and QEMU log, if QEMU died early."""
    if not proc.alive():
        mon.update()
        if not mon.done:
            raise QemuError(f"QEMU exited before ORACLE DONE (rc={proc.returncode}); "
                            f"{mon.verdict().text}\nserial tail:\n"
                            f"{_tail(mon.path)}\nqemu log:\n{proc.log_tail()}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return "(none)"


# The oracle's pattern, to find its pages in the RAM file from the host:
# word w of page p at generation g is mix64(mix64(p << 32 | g) + (w+1)*GOLDEN).

def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * C1) & M64
    z = ((z ^ (z >> 27)) * C2) & M64
    return z ^ (z >> 31)


def _unxorshift(y: int, s: int) -> int:
    x = y
    for _ in range(64 // s + 1):
        x = y ^ (x >> s)
    return x


def _unmix64(z: int) -> int:
    z = _unxorshift(z, 31)
    z = (z * pow(C2, -1, 1 << 64)) & M64
    z = _unxorshift(z, 27)
    z = (z * pow(C1, -1, 1 << 64)) & M64
    return _unxorshift(z, 30)


def _oracle_page(page: bytes, npages: int) -> tuple[int, int] | None:
    """(oracle page index, generation) if ``page`` holds an oracle pattern."""
    w0 = int.from_bytes(page[0:8], "little")
    w1 = int.from_bytes(page[8:16], "little")
    seed = (_unmix64(w0) - GOLDEN) & M64
    key = _unmix64(seed)
    p, g = key >> 32, key & 0xFFFFFFFF
    if p >= npages or w1 != _mix64((seed + 2 * GOLDEN) & M64):
        return None
    return p, g


def test_pattern_inversion_matches_oracle_formula() -> None:
    seed = _mix64((1234 << 32) | 7)
    page = b"".join(_mix64((seed + (w + 1) * GOLDEN) & M64).to_bytes(8, "little")
                    for w in range(PAGE // 8))
    assert _oracle_page(page, 40960) == (1234, 7)
    assert _oracle_page(bytes(PAGE), 40960) is None


def test_oracle_passes_on_plain_ram(guest_image: GuestImage, shm_dir: Path) -> None:
    try:
        memcg: MemoryCgroup | None = MemoryCgroup(f"ipm-test-oracle-{os.getpid()}")
    except CgroupError:
        memcg = None  # the plumbing is still tested without it
    append = kernel_cmdline(oracle_mib=160, seconds=20, report_s=5, sweep_s=10)
    cfg = _config(guest_image, shm_dir, append, memcg)
    mon = OracleMonitor(cfg.serial_log)
    try:
        with QemuProcess(cfg) as proc:
            if memcg is not None:
                assert proc.pid in memcg.pids()  # joined before exec
            assert proc.qmp().execute("query-status")["status"] == "running"
            assert mon.wait_for(lambda m: m.filled, 120, lambda m: _watch(proc, m)), \
                f"no ORACLE FILLED: {mon.verdict().text}\n{_tail(cfg.serial_log)}"
            boot_s = (mon.started_at or 0) - (proc.started_at or 0)
            rss_kb = proc.ram_mapping_rss_kb()
            assert rss_kb > 160 * 1024, rss_kb
            if memcg is not None:
                assert memcg.usage_bytes() > 160 << 20
                memcg.force_reclaim()  # tmpfs without swap: must not disturb the guest
            assert mon.wait_for(lambda m: m.done, 180, lambda m: _watch(proc, m)), \
                f"no ORACLE DONE: {mon.verdict().text}\n{_tail(cfg.serial_log)}"
            rc = proc.wait(60)
            assert rc == 0, f"QEMU did not power off on its own (rc={rc})"
    finally:
        if memcg is not None:
            memcg.destroy()
    verdict = mon.verdict()
    print(f"\n{verdict.text}; boot {boot_s:.1f}s; rates "
          f"{[round(p.rate) for p in mon.progress]}; RAM mapping RSS {rss_kb} kB")
    assert verdict.ok, f"{verdict.text}\n{_tail(cfg.serial_log)}"
    assert verdict.verified > 0 and verdict.mismatches == 0
    assert mon.sweeps >= 2 and mon.exit_code == 0


def test_oracle_detects_host_side_corruption(guest_image: GuestImage, shm_dir: Path) -> None:
    append = kernel_cmdline(oracle_mib=160, seconds=10, report_s=2, sweep_s=5)
    cfg = _config(guest_image, shm_dir, append)
    mon = OracleMonitor(cfg.serial_log)
    corrupted: set[int] = set()
    with QemuProcess(cfg) as proc:
        assert mon.wait_for(lambda m: m.filled, 120, lambda m: _watch(proc, m)), \
            f"no ORACLE FILLED: {mon.verdict().text}\n{_tail(cfg.serial_log)}"
        # Find oracle pages in the shared file (offset == guest-physical
        # address for low RAM on "pc") and flip one word in 64 of them; only
        # oracle pages are hit, so the guest kernel stays intact.
        fd = os.open(cfg.ram_path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            for off in range(0, size, PAGE):
                if _oracle_page(os.pread(fd, 16, off), mon.pages) is None:
                    continue
                word_off = off + 100 * 8
                os.pwrite(fd, (0xDEADBEEF0BADF00D).to_bytes(8, "little"), word_off)
                corrupted.add(word_off)
                if len(corrupted) >= 64:
                    break
        finally:
            os.close(fd)
        assert len(corrupted) == 64, "oracle pages not found in the RAM file"
        assert mon.wait_for(lambda m: m.done, 180, lambda m: _watch(proc, m)), \
            f"no ORACLE DONE: {mon.verdict().text}\n{_tail(cfg.serial_log)}"
        assert proc.wait(60) is not None
    verdict = mon.verdict()
    print(f"\n{verdict.text}; {len(mon.mismatch_lines)} MISMATCH lines")
    assert not verdict.ok and not verdict.kernel_panic
    # Only a pwrite racing the oracle's own verify+rewrite of that page escapes.
    assert verdict.mismatches >= 32, verdict.text
    reported = {int(line.split("gpa=")[1].split()[0], 16) for line in mon.mismatch_lines}
    assert reported <= corrupted, "mismatches reported at addresses we did not corrupt"
    assert any("got=0xdeadbeef0badf00d" in line for line in mon.mismatch_lines)
    # The oracle repairs a reported page, so the final sweep is clean again.
    assert mon.sweep_mismatches < verdict.mismatches

