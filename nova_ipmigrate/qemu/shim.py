"""The MADV_HUGEPAGE-dropping LD_PRELOAD shim for QEMU (``nohuge.c``).

This module owns compiling the shim (cached by content hash) and building
the environment that preloads it.  Why the shim exists: QEMU madvises guest
RAM MADV_HUGEPAGE, and on a FUSE-backed RAM file the kernel's VM_HUGEPAGE
fault path then reads ahead PMD-sized chunks even with readahead disabled;
without the advice every guest fault is a single-page FUSE READ.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from pathlib import Path

from nova_ipmigrate.cbuild import compile_c

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
    return compile_c(shim_source(), "nohuge", cache_dir,
                     ["-O2", "-shared", "-fPIC", "-Wall", "-Wextra"], ShimError, suffix=".so",
                     cc=cc, libs=["-ldl"])


def preload_env(shim: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: os.environ) with ``shim`` first in LD_PRELOAD."""
    env = dict(os.environ if base is None else base)
    existing = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{shim} {existing}".strip() if existing else str(shim)
    return env
