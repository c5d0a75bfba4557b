"""The memory view: summary, SVG and PNG of a page map."""

from __future__ import annotations

import zlib
from pathlib import Path

from nova_ipmigrate.lab import memview


def test_summary_counts_pages_by_place() -> None:
    text = memview.summary("RR11..2L", {"1": "h2", "2": "h3"}, "h1")
    assert "resident on h1 (main host)" in text and "on h2" in text
    assert "       2 pages" in text.split("on h2")[1].splitlines()[0]


def test_png_is_a_valid_image_of_the_right_size(tmp_path: Path) -> None:
    data = memview.png("R" * 1000 + "1" * 1000, width=64, scale=1)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 64 and height == 16   # 2000 pages, 2 per cell, 64 cells a row
    idat = data.index(b"IDAT")
    n = int.from_bytes(data[idat - 4:idat], "big")
    raw = zlib.decompress(data[idat + 4:idat + 4 + n])
    assert raw[1:4] == bytes(memview.PALETTE["R"])


def test_large_maps_are_grouped(tmp_path: Path) -> None:
    codes, group, rows = memview.cells("1" * 131072, width=256)
    assert group == 8 and len(codes) == 16384 and rows == 64
    reply = {"map": "R" * 100 + "2" * 50, "holders": {"2": "h3"}, "host": "h1"}
    text = memview.render(reply, tmp_path)
    assert (tmp_path / "memory-map.svg").read_text().startswith("<svg")
    assert (tmp_path / "memory-map.png").stat().st_size > 50
    assert "on h3" in text
