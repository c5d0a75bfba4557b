"""Where a split VM's memory is: a text summary and a picture (SVG and PNG).

Renders the page map an agent returns (``page_map`` control operation: one
character per page) as a grid, one cell per group of pages coloured by where
most of them live: resident on the main host, paged out locally, or on which
sub-host. The PNG writer is a few lines of zlib so nothing else is needed.
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

from nova_ipmigrate.memfs import control

PALETTE: dict[str, tuple[int, int, int]] = {
    ".": (235, 235, 235), "R": (214, 39, 40), "L": (255, 127, 14),
    "1": (31, 119, 180), "2": (44, 160, 44), "3": (148, 103, 189), "4": (140, 86, 75),
    "5": (227, 119, 194), "6": (127, 127, 127), "7": (188, 189, 34), "8": (23, 190, 207),
}
OTHER = (0, 0, 0)


def legend(holders: dict[str, str], main: str) -> dict[str, str]:
    out = {".": "never written", "R": f"resident on {main} (main host)",
           "L": f"paged out, local to {main}"}
    out.update({k: f"on {v}" for k, v in holders.items()})
    return out


def summary(pmap: str, holders: dict[str, str], main: str) -> str:
    counts = collections.Counter(pmap)
    total = len(pmap)
    lines = [f"{len(pmap)} pages ({total * 4 // 1024} MiB)"]
    for code, text in legend(holders, main).items():
        n = counts.get(code, 0)
        lines.append(f"  {text:40s} {n:8d} pages {n * 4 / 1024:8.1f} MiB {100 * n / total:5.1f}%")
    return "\n".join(lines)


def cells(pmap: str, width: int = 256) -> tuple[list[str], int, int]:
    """Majority code of each group of pages, in rows of ``width`` cells."""
    # at most width x width/4 cells
    group = max(1, -(-len(pmap) // (width * width // 4)))
    out = []
    for i in range(0, len(pmap), group):
        out.append(collections.Counter(pmap[i:i + group]).most_common(1)[0][0])
    return out, group, -(-len(out) // width)


def svg(pmap: str, holders: dict[str, str], main: str, width: int = 256, cell: int = 3) -> str:
    codes, group, rows = cells(pmap, width)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * cell + 260}" '
             f'height="{max(rows * cell, 200) + 30}" font-family="sans-serif" font-size="12">',
             f'<text x="0" y="14">guest memory by host ({group} page(s) per cell, '
             f'{len(pmap)} pages)</text>']
    for i, c in enumerate(codes):
        r, g, b = PALETTE.get(c, OTHER)
        x, y = (i % width) * cell, 20 + (i // width) * cell
        parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" '
                     f'fill="rgb({r},{g},{b})"/>')
    for j, (code, text) in enumerate(legend(holders, main).items()):
        r, g, b = PALETTE.get(code, OTHER)
        y = 24 + j * 18
        parts.append(f'<rect x="{width * cell + 10}" y="{y}" width="12" height="12" '
                     f'fill="rgb({r},{g},{b})"/><text x="{width * cell + 28}" y="{y + 11}">'
                     f'{text}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def png(pmap: str, width: int = 256, scale: int = 2) -> bytes:
    codes, _group, rows = cells(pmap, width)
    raw = bytearray()
    for row in range(rows):
        line = bytearray()
        for col in range(width):
            i = row * width + col
            line += bytes(PALETTE.get(codes[i], OTHER) if i < len(codes) else (255, 255, 255)
                          ) * scale
        for _ in range(scale):
            raw += b"\0" + line

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width * scale, rows * scale, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b""))


def render(reply: dict[str, Any], out_dir: Path, stem: str = "memory-map") -> str:
    """Write ``<stem>.svg`` and ``<stem>.png``; returns the text summary."""
    pmap, holders, main = reply["map"], reply["holders"], reply["host"]
    (out_dir / f"{stem}.svg").write_text(svg(pmap, holders, main))
    (out_dir / f"{stem}.png").write_bytes(png(pmap))
    return summary(pmap, holders, main)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nova_ipmigrate.lab.memview",
                                 description="Show where a split VM's memory is.")
    ap.add_argument("--socket", type=Path, required=True, help="the main host agent's socket")
    ap.add_argument("--path", default="libvirt/qemu/1-oracle/pc.ram", help="RAM file on memfs")
    ap.add_argument("--out", type=Path, default=Path("."), help="directory for SVG and PNG")
    args = ap.parse_args(argv)
    try:
        reply = control.call(args.socket, "page_map", path=args.path)
    except control.ControlError as exc:
        print(f"memview: {exc}", file=sys.stderr)
        return 1
    print(render(reply, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
