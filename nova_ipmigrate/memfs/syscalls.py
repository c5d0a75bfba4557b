"""ctypes wrappers for the few system calls Python's os module lacks.

Calls through ctypes release the GIL, which matters here: a fault on a memfs
mapping must be served by this same process's reader threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mlock2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]

PROT_READ = 1
MAP_SHARED = 1
MAP_FAILED = ctypes.c_void_p(-1).value
MLOCK_ONFAULT = 1
MADV_POPULATE_READ = 22
MNT_DETACH = 2


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                   data.encode() if data is not None else None) != 0:
        _raise(f"mount {target}")


def umount2(target: str, flags: int) -> None:
    if _libc.umount2(target.encode(), flags) != 0:
        _raise(f"umount {target}")


def mmap_shared_readonly(fd: int, length: int) -> int:
    addr = _libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, 0)
    if addr is None or addr == MAP_FAILED:
        _raise("mmap")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        _raise("munmap")


def mlock_onfault(addr: int, length: int) -> None:
    """Lock pages of the range as they get mapped, without populating it now."""
    if _libc.mlock2(addr, length, MLOCK_ONFAULT) != 0:
        _raise("mlock2")


def populate_read(addr: int, length: int) -> None:
    """Map the range's pages (faulting them in if needed); in a locked VMA this mlocks them."""
    if _libc.madvise(addr, length, MADV_POPULATE_READ) != 0:
        _raise("madvise(MADV_POPULATE_READ)")
