"""Progress of long operations on a terminal: a bar, bytes, rate, ETA, re-sends.

On a terminal the bar is redrawn in place; elsewhere (logs, CI) a line is
printed at most every ``interval`` seconds and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

MIB = 2**20


def format_progress(op: dict[str, Any], width: int = 28) -> str:
    """One line for an operation's progress (agent ``op_status`` reply)."""
    pr = op.get("progress", {})
    total = int(pr.get("bytes_total", 0))
    done = min(int(pr.get("bytes_done", 0)), total) if total else 0
    frac = done / total if total else (1.0 if op.get("state") == "done" else 0.0)
    fill = int(round(frac * width))
    bar = "#" * fill + "-" * (width - fill)
    what = op.get("kind", "operation").replace("_", " ")
    where = f"{op.get('source') or 'all'} -> {op.get('dest')}"
    eta = pr.get("eta_s", 0.0)
    phase = (op.get("details") or {}).get("phase") or pr.get("phase")
    if not total and phase:   # a main-host move's libvirt step: no bytes of its own
        text = f"{what} {where}: {phase}"
        dt = pr.get("downtime_ms")
        if dt is not None:
            text += f" (downtime {dt} ms)"
    else:
        text = (f"{what} {where} [{bar}] {frac * 100:5.1f}% "
            f"{done / MIB:7.1f}/{total / MIB:.1f} MiB {pr.get('rate_bytes_s', 0) / MIB:6.1f} "
            f"MiB/s ETA {eta:4.1f}s re-sent {pr.get('resent', 0)} "
            f"invalidated {pr.get('invalidated', 0)}")
    state = op.get("state", "running")
    if state != "running":
        text += f"  {state.upper()}"
        if op.get("fault"):
            text += f": {op['fault']}"
    return text


class ProgressPrinter:
    def __init__(self, stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval = interval
        self._last = float("-inf")

    def update(self, op: dict[str, Any]) -> None:
        line = format_progress(op)
        final = op.get("state", "running") != "running"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
            self.stream.flush()
            return
        now = time.monotonic()
        if final or now - self._last >= self.interval:
            self._last = now
            self.stream.write(line + "\n")
            self.stream.flush()
