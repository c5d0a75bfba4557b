"""The progress bar of ``--wait`` (on stderr): redrawn in place on a terminal, one
line per 10% step (and per state change) otherwise, so that logs stay readable."""

from __future__ import annotations

import sys
from typing import IO, Any

WIDTH = 30


def describe(op: dict[str, Any]) -> str:
    """``partial_migration ipm-h2 -> ipm-h4 running copy 1200/2650 pages``."""
    pr = op.get("progress") or {}
    src, dst = op.get("source_host"), op.get("dest_host")
    if op.get("kind") == "host_drain":
        route = f" {src}" if src else ""
    elif src or dst:
        route = f" {src or ''} -> {dst or '(scheduler)'}".replace("  ", " ")
    else:
        route = ""
    step = f" {op['step']}" if op.get("step") else ""
    pages = ""
    if pr.get("pages_total"):
        pages = f" {pr.get('pages_done', 0)}/{pr['pages_total']} pages"
    return f"{op.get('kind', 'operation')}{route} {op.get('state')}{step}{pages}"


def percent(op: dict[str, Any]) -> float:
    try:
        return float((op.get("progress") or {}).get("percent") or 0.0)
    except (TypeError, ValueError):
        return 0.0


class ProgressBar:
    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._last: tuple[int, str] | None = None
        self._drawn = False

    def __call__(self, op: dict[str, Any]) -> None:
        pct = max(0.0, min(100.0, percent(op)))
        filled = int(WIDTH * pct / 100)
        line = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {pct:5.1f}% {describe(op)}"
        key = (int(pct // 10), str(op.get("state")))
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._drawn = True
        elif key != self._last:
            self.stream.write(line + "\n")
        self._last = key
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
