"""A guest stand-in on the host: maps a RAM file and checks every page it reads.

Usage: mmap_worker.py PATH SIZE_BYTES SECONDS [--hot PCT]. Fills every page
with a (page, generation) pattern, then for SECONDS verifies and rewrites
pages (70% uniform, 30% in a hot tenth), then verifies all pages. Prints
``checked N mismatches M`` and exits 0 only with 0 mismatches.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
import sys
import time


def main() -> int:
    path, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    npages = size // 4096
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, size, mmap.MAP_SHARED)
    gen = [0] * npages

    def pat(p: int, g: int) -> bytes:
        return struct.pack("<QQ", p, g) * 256

    for p in range(npages):
        m[p * 4096:(p + 1) * 4096] = pat(p, 0)
    print("filled", flush=True)
    bad = checked = 0
    rnd = random.Random(7)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        p = rnd.randrange(npages) if rnd.random() < 0.7 else rnd.randrange(max(1, npages // 10))
        if m[p * 4096:(p + 1) * 4096] != pat(p, gen[p]):
            bad += 1
            print("MISMATCH", p, gen[p], m[p * 4096:p * 4096 + 16].hex(), flush=True)
        gen[p] += 1
        m[p * 4096:(p + 1) * 4096] = pat(p, gen[p])
        checked += 1
    for p in range(npages):
        checked += 1
        if m[p * 4096:(p + 1) * 4096] != pat(p, gen[p]):
            bad += 1
            print("MISMATCH", p, gen[p], flush=True)
    print(f"checked {checked} mismatches {bad}", flush=True)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
