"""Compiling the C helpers into a hash-keyed cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nova_ipmigrate.cbuild import compile_c

HELLO = b'#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'

needs_cc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


class BuildError(Exception):
    pass


@needs_cc
def test_compiles_once_and_reuses_the_cache(tmp_path: Path) -> None:
    out = compile_c(HELLO, "hello", tmp_path, ["-O2"], BuildError)
    assert subprocess.run([str(out)], capture_output=True, text=True).stdout == "hi\n"
    mtime = out.stat().st_mtime_ns
    assert compile_c(HELLO, "hello", tmp_path, ["-O2"], BuildError) == out
    assert out.stat().st_mtime_ns == mtime
    assert compile_c(HELLO, "hello", tmp_path, ["-O1"], BuildError) != out, "flags are in the key"


@needs_cc
def test_compile_errors_and_missing_compiler_raise_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="compiling broken failed"):
        compile_c(b"int main(void) { return }", "broken", tmp_path, [], BuildError)
    with pytest.raises(BuildError, match="no-such-cc not found"):
        compile_c(HELLO, "hello", tmp_path, [], BuildError, cc="no-such-cc")
    assert [p.name for p in tmp_path.iterdir()] == []
