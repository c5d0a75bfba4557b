"""The MADV_HUGEPAGE-dropping LD_PRELOAD shim for QEMU (``nohuge.c``).

This module owns compiling the shim (cached by content hash) and building
the environment that preloads it.  Why the shim exists: QEMU madvises guest
RAM MADV_HUGEPAGE, and on a FUSE-backed RAM file the kernel's VM_HUGEPAGE
fault path then reads ahead PMD-sized chunks even with readahead disabled;
without the advice every guest fault is a single-page FUSE READ.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ShimError", "ensure_nohuge_shim", "preload_env", "shim_source"]


class ShimError(RuntimeError):
    """The shim cannot be built; the message says how to fix it."""


def shim_source() -> bytes:
    """The shim's C source, read from package data."""
    return importlib.resources.files(__package__).joinpath("nohuge.c").read_bytes()


def ensure_nohuge_shim(cache_dir: Path, cc: str = "gcc") -> Path:
    """Compile ``nohuge.c`` into ``cache_dir`` (once per source); return the .so."""
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    src = shim_source()
    key = hashlib.sha256(src + b"\0" + cc.encode()).hexdigest()[:16]
    out = cache_dir / f"nohuge-{key}.so"
    if out.is_file():
        return out
    if not shutil.which(cc):
        raise ShimError(f"{cc} not found: apt-get install gcc libc6-dev")
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        c_file = Path(tmp) / "nohuge.c"
        c_file.write_bytes(src)
        so = Path(tmp) / "nohuge.so"
        res = subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-o", str(so), str(c_file), "-ldl"],
            capture_output=True, check=False)
        if res.returncode != 0:
            raise ShimError(f"compiling the nohuge shim failed:\n"
                            f"{res.stderr.decode(errors='replace')}")
        # Atomic: concurrent callers may race on the same cache entry.
        os.replace(so, out)
    return out


def preload_env(shim: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: os.environ) with ``shim`` first in LD_PRELOAD."""
    env = dict(os.environ if base is None else base)
    existing = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{shim} {existing}".strip() if existing else str(shim)
    return env
