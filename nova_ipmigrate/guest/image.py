"""Guest image for oracle runs: a Debian kernel plus a busybox initramfs.

This module owns building, caching and describing the test guest:

* compiling the memory oracle (``oracle.c``, shipped as package data) into a
  static binary with gcc;
* writing the initramfs as a gzip'd ``newc`` cpio with our own writer (no
  dependency on the ``cpio`` tool), holding static busybox, its applet links,
  ``/init`` and ``/oracle``;
* fetching the guest kernel from Debian's archive (resolving the
  ``linux-image-amd64`` metapackage, ``apt-get download``, extracting
  ``/boot/vmlinuz-*``);
* building the kernel command line that parametrises the oracle.

Everything is cached in a caller-chosen directory and keyed by content
hashes, so repeated calls are cheap and edits to the oracle or the init
script rebuild the initrd.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import gzip
import hashlib
import importlib.resources
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from nova_ipmigrate.cbuild import compile_c

__all__ = [
    "BUSYBOX_APPLETS",
    "CpioEntry",
    "GuestImage",
    "GuestImageError",
    "INIT_SCRIPT",
    "build_initramfs",
    "compile_oracle",
    "ensure_guest_image",
    "ensure_kernel",
    "find_static_busybox",
    "is_static_elf",
    "kernel_cmdline",
    "main",
    "oracle_source",
    "parse_cpio",
    "write_cpio",
]

# Applets /init uses, plus a few that make a debug shell usable.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "mount", "umount", "poweroff", "reboot", "cat", "sleep", "echo",
    "ls", "mkdir", "dmesg", "free", "uname",
)

# PID 1 of the guest.  The oracle is not PID 1 on purpose: if it dies, the
# shell still powers the machine off, so QEMU always exits (with -no-reboot)
# and the host sees ORACLE EXIT instead of a hung guest or an init panic.
INIT_SCRIPT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo "ORACLE INIT kernel=$(uname -r)"
/oracle
echo "ORACLE EXIT rc=$?"
poweroff -f
"""

_NEWC_MAGIC = b"070701"
_CPIO_TRAILER = "TRAILER!!!"
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_S_IFLNK = 0o120000
_S_IFCHR = 0o020000


class GuestImageError(RuntimeError):
    """The guest image cannot be built; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """Paths of a built guest image (all inside the cache directory)."""

    kernel: Path
    initrd: Path
    oracle: Path


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive.

    ``data`` is the file content for regular files and the link target for
    symlinks; ``rdev`` is (major, minor) for device nodes.
    """

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0


# ---------------------------------------------------------------- cpio


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class _Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


def write_cpio(entries: Sequence[CpioEntry], out: _Writer) -> None:
    """Write ``entries`` as a newc ("070701") cpio archive, plus trailer."""
    ino = 1
    for entry in [*entries, CpioEntry(_CPIO_TRAILER, 0)]:
        name = entry.name.lstrip("/") or "."
        name_b = name.encode() + b"\0"
        is_trailer = entry.name == _CPIO_TRAILER
        fields = (
            0 if is_trailer else ino,
            entry.mode,
            entry.uid,
            entry.gid,
            2 if entry.mode & 0o170000 == _S_IFDIR else 1,
            entry.mtime,
            len(entry.data),
            0, 0,                 # dev major/minor of the archive's fs
            entry.rdev[0], entry.rdev[1],
            len(name_b),
            0,                    # check: only used by the "070702" format
        )
        ino += 1
        header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        out.write(header + name_b + b"\0" * _pad4(len(header) + len(name_b)))
        out.write(entry.data + b"\0" * _pad4(len(entry.data)))


def parse_cpio(blob: bytes) -> list[CpioEntry]:
    """Parse a newc cpio archive (without trailer) back into entries."""
    entries: list[CpioEntry] = []
    off = 0
    while True:
        if blob[off:off + 6] != _NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at offset {off}")
        f = [int(blob[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_start = off + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize
        data_start += _pad4(data_start - off)
        data = blob[data_start:data_start + filesize]
        off = data_start + filesize + _pad4(filesize)
        if name == _CPIO_TRAILER:
            return entries
        entries.append(CpioEntry(name, f[1], data, (f[9], f[10]), f[2], f[3], f[5]))


# ---------------------------------------------------------------- helpers


def oracle_source() -> bytes:
    """The oracle's C source, read from package data."""
    return importlib.resources.files(__package__).joinpath("oracle.c").read_bytes()


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP (dynamic loader)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            return False
        if ident[4] != 2:  # only ELFCLASS64 matters on the hosts we run
            return False
        endian = "<" if ident[5] == 1 else ">"
        phoff, = struct.unpack_from(endian + "Q", ident, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(cmd), capture_output=True, check=False, cwd=cwd)


def find_static_busybox() -> Path:
    """Locate a statically linked busybox (package busybox-static)."""
    candidates: list[Path] = []
    if shutil.which("dpkg"):
        res = _run(["dpkg", "-L", "busybox-static"])
        if res.returncode == 0:
            candidates += [Path(line) for line in res.stdout.decode().splitlines()
                           if line.endswith("/busybox")]
    which = shutil.which("busybox")
    if which:
        candidates.append(Path(which))
    candidates += [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    dynamic: list[Path] = []
    for cand in candidates:
        if cand.is_file():
            if is_static_elf(cand):
                return cand
            dynamic.append(cand)
    if dynamic:
        raise GuestImageError(
            f"busybox at {dynamic[0]} is dynamically linked; the initramfs needs the "
            "static one: apt-get install busybox-static")
    raise GuestImageError("no busybox found: apt-get install busybox-static")


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    # Concurrent test processes share one cache; serialise builds.
    with open(cache_dir / ".guest-image.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- builders


def compile_oracle(cache_dir: Path, cc: str = "gcc") -> Path:
    """Compile oracle.c static (cached by source hash); return the binary."""
    return compile_c(oracle_source(), "oracle", cache_dir,
                     ["-O2", "-static", "-Wall", "-Wextra"], GuestImageError, cc=cc)


def build_initramfs(oracle: Path, busybox: Path, init_script: str = INIT_SCRIPT) -> bytes:
    """Return the gzip'd newc cpio of the guest's initramfs."""
    entries: list[CpioEntry] = [
        CpioEntry(d, _S_IFDIR | 0o755)
        for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root")
    ]
    # The kernel opens /dev/console for init before devtmpfs is mounted, so
    # the node must exist in the archive for early output to reach ttyS0.
    entries.append(CpioEntry("dev/console", _S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("dev/null", _S_IFCHR | 0o666, rdev=(1, 3)))
    entries.append(CpioEntry("bin/busybox", _S_IFREG | 0o755, busybox.read_bytes()))
    for applet in BUSYBOX_APPLETS:
        entries.append(CpioEntry(f"bin/{applet}", _S_IFLNK | 0o777, b"busybox"))
    entries.append(CpioEntry("init", _S_IFREG | 0o755, init_script.encode()))
    entries.append(CpioEntry("oracle", _S_IFREG | 0o755, oracle.read_bytes()))
    raw = io.BytesIO()
    # mtime=0 keeps the archive reproducible for a given content hash.
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        write_cpio(entries, gz)
    return raw.getvalue()


def _resolve_kernel_package(kernel_package: str) -> str:
    """Follow a metapackage (linux-image-amd64) to the real image package."""
    if not shutil.which("apt-cache"):
        raise GuestImageError("apt-cache not found: the guest kernel comes from Debian's "
                              "archive, run this on a Debian/Ubuntu host with apt")
    res = _run(["apt-cache", "depends", kernel_package])
    if res.returncode != 0:
        raise GuestImageError(f"apt-cache depends {kernel_package} failed: "
                              f"{res.stderr.decode(errors='replace').strip()} "
                              "(try: apt-get update)")
    deps = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", res.stdout.decode(), re.M)
    real = [d for d in deps if re.match(r"linux-image-\d", d)]
    if real:
        return real[0]
    if re.match(r"linux-image-\d", kernel_package):
        return kernel_package
    raise GuestImageError(f"cannot resolve {kernel_package} to a linux-image package "
                          f"(apt-cache depends said: {res.stdout.decode().strip()!r})")


def _apt_download(package: str, dest: Path) -> Path:
    if not shutil.which("apt-get"):
        raise GuestImageError("apt-get not found: needed to download the guest kernel")
    for attempt in range(2):
        res = _run(["apt-get", "download", package], cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if res.returncode == 0 and debs:
            return debs[-1]
        if attempt == 0:
            # Usually missing or stale package lists (fresh container).
            _run(["apt-get", "update"])
    raise GuestImageError(f"apt-get download {package} failed: "
                          f"{res.stderr.decode(errors='replace').strip()}")


def _extract_vmlinuz(deb: Path, out_dir: Path) -> Path:
    if not shutil.which("dpkg-deb"):
        raise GuestImageError("dpkg-deb not found: apt-get install dpkg")
    res = _run(["dpkg-deb", "--fsys-tarfile", str(deb)])
    if res.returncode != 0:
        raise GuestImageError(f"dpkg-deb --fsys-tarfile {deb} failed: "
                              f"{res.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if member.isfile() and base.startswith("vmlinuz-") and "/boot/" in f"/{member.name}":
                src = tar.extractfile(member)
                assert src is not None
                out = out_dir / base
                _atomic_write(out, src.read())
                return out
    raise GuestImageError(f"no /boot/vmlinuz-* in {deb}")


def ensure_kernel(cache_dir: Path, kernel_package: str = "linux-image-amd64") -> Path:
    """Return a cached guest kernel, downloading it from the archive if needed."""
    kdir = cache_dir / "kernel"
    kdir.mkdir(parents=True, exist_ok=True)
    pointer = kdir / f"{kernel_package}.path"
    try:
        package = _resolve_kernel_package(kernel_package)
    except GuestImageError:
        # Offline or apt-less: a kernel fetched earlier is still good.
        if pointer.is_file() and Path(pointer.read_text().strip()).is_file():
            return Path(pointer.read_text().strip())
        raise
    version = package.removeprefix("linux-image-")
    kernel = kdir / f"vmlinuz-{version}"
    if not kernel.is_file():
        with tempfile.TemporaryDirectory(dir=kdir) as tmp:
            deb = _apt_download(package, Path(tmp))
            extracted = _extract_vmlinuz(deb, kdir)
        if extracted != kernel:
            os.replace(extracted, kernel)
    _atomic_write(pointer, f"{kernel}\n".encode())
    return kernel


def ensure_guest_image(cache_dir: Path, kernel_package: str = "linux-image-amd64") -> GuestImage:
    """Build (or reuse from ``cache_dir``) the kernel and oracle initramfs."""
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache_dir):
        busybox = find_static_busybox()
        oracle = compile_oracle(cache_dir)
        key = _sha(oracle.read_bytes(), INIT_SCRIPT.encode(), busybox.read_bytes(),
                   ",".join(BUSYBOX_APPLETS).encode())
        initrd = cache_dir / f"initrd-{key}.cpio.gz"
        if not initrd.is_file():
            _atomic_write(initrd, build_initramfs(oracle, busybox))
        kernel = ensure_kernel(cache_dir, kernel_package)
    return GuestImage(kernel=kernel, initrd=initrd, oracle=oracle)


def kernel_cmdline(oracle_mib: int, seconds: int, report_s: int = 5, sweep_s: int = 30,
                   hot_percent: int = 0, hot_set_percent: int = 10, extra: str = "",
                   *, rate_mibps: int = 0) -> str:
    """Kernel command line for an oracle guest on ttyS0.

    ``panic=-1`` turns a guest panic into an immediate reboot, which QEMU's
    ``-no-reboot`` turns into an exit; ``oops=panic`` does the same for an
    oops, so a broken guest ends the run instead of limping on.
    """
    for name, value in (("oracle_mib", oracle_mib), ("seconds", seconds),
                        ("report_s", report_s), ("sweep_s", sweep_s),
                        ("hot_percent", hot_percent), ("hot_set_percent", hot_set_percent),
                        ("rate_mibps", rate_mibps)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if hot_percent > 100 or hot_set_percent > 100:
        raise ValueError("hot_percent and hot_set_percent are percentages (0..100)")
    parts = [
        "console=ttyS0", "quiet", "panic=-1", "oops=panic",
        f"oracle.mib={oracle_mib}", f"oracle.seconds={seconds}",
        f"oracle.report={report_s}", f"oracle.sweep={sweep_s}",
        f"oracle.hot={hot_percent}", f"oracle.hotpct={hot_set_percent}",
        f"oracle.rate={rate_mibps}",
    ]
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: build the guest image and print its paths."""
    parser = argparse.ArgumentParser(
        prog="python -m nova_ipmigrate.guest.image",
        description="Build the oracle guest image (kernel + initramfs) into a cache dir.")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--kernel-package", default="linux-image-amd64")
    args = parser.parse_args(argv)
    try:
        image = ensure_guest_image(args.cache_dir, args.kernel_package)
    except GuestImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kernel={image.kernel}")
    print(f"initrd={image.initrd}")
    print(f"oracle={image.oracle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
