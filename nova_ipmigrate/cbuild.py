"""Compiling the project's small C helpers on the host, cached by source hash.

The guest oracle and the QEMU shim ship as C source (package data) and are
built with the host's compiler the first time they are needed; the result is
kept in a cache directory under a name that changes with the source, the
compiler and the flags, and is written atomically so concurrent callers may race.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def compile_c(source: bytes, name: str, cache_dir: Path, flags: Sequence[str],
              error: type[Exception], suffix: str = "", cc: str = "gcc",
              libs: Sequence[str] = ()) -> Path:
    """Compile ``source`` into ``cache_dir/<name>-<hash><suffix>`` once; return that path.

    Raises ``error`` with the fix when the compiler is missing or fails.
    """
    key = hashlib.sha256(b"\0".join([source, cc.encode(), *(f.encode() for f in flags),
                                     *(lib.encode() for lib in libs)])).hexdigest()[:16]
    out = Path(cache_dir) / f"{name}-{key}{suffix}"
    if out.is_file():
        return out
    if not shutil.which(cc):
        raise error(f"{cc} not found: apt-get install gcc libc6-dev")
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        c_file = Path(tmp) / f"{name}.c"
        c_file.write_bytes(source)
        binary = Path(tmp) / f"{name}{suffix}"
        res = subprocess.run([cc, *flags, "-o", str(binary), str(c_file), *libs],
                             capture_output=True, check=False)
        if res.returncode != 0:
            raise error(f"compiling {name} failed (apt-get install gcc libc6-dev):\n"
                        f"{res.stderr.decode(errors='replace')}")
        os.replace(binary, out)
    return out
