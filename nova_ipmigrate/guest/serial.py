"""Host-side reading of the oracle guest's serial console.

This module owns the interpretation of the oracle's output (see
``oracle.c`` for the line formats): it follows a growing serial log file,
parses ORACLE lines and guest-kernel failure lines, and turns them into a
verdict.  The rule the whole project tests against: a run passes only if
the oracle finished, reported 0 mismatches and the guest kernel did not
fail.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["OracleMonitor", "Progress", "Verdict", "PANIC_MARKERS"]

# Guest-kernel lines that mean memory (or the kernel's view of it) is broken.
PANIC_MARKERS: tuple[str, ...] = (
    "Kernel panic",
    "BUG:",
    "bad pmd",
    "general protection fault",
)

_KV = re.compile(r"(\w+)=(\S+)")


@dataclasses.dataclass(frozen=True)
class Progress:
    """One ORACLE PROGRESS line."""

    t: float
    verified: int
    rate: float
    mismatches: int


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Outcome of an oracle run as seen on the console."""

    ok: bool
    done: bool
    verified: int
    mismatches: int
    sweeps: int
    kernel_panic: bool
    text: str


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class OracleMonitor:
    """Follows a serial log and tracks the oracle's state.

    Call :meth:`update` (or :meth:`wait_for`) to read what was appended
    since the last call.  Partial lines are kept until their newline
    arrives; undecodable bytes and unparsable lines are ignored, because a
    console also carries kernel messages and garbage after a reset.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.started = False
        self.filled = False
        self.done = False
        #: ORACLE START lines seen: more than one means the guest rebooted
        self.starts = 0
        self.exit_code: int | None = None
        self.pages = 0
        self.verified = 0
        self._reported_mismatches = 0
        self._mismatch_line_count = 0
        self.sweeps = 0
        self.sweep_mismatches = 0
        self.progress: list[Progress] = []
        self.mismatch_lines: list[str] = []
        self.panic_lines: list[str] = []
        self.last_rate = 0.0
        self.started_at: float | None = None
        self.filled_at: float | None = None
        self.done_at: float | None = None
        self.lines_seen = 0

    # ---------------------------------------------------------- state

    @property
    def mismatches(self) -> int:
        """Total mismatching pages (the oracle rate-limits MISMATCH lines)."""
        return max(self._reported_mismatches, self._mismatch_line_count)

    @property
    def kernel_panic(self) -> bool:
        return bool(self.panic_lines)

    # ---------------------------------------------------------- reading

    def update(self) -> int:
        """Read and parse newly appended bytes; return the lines parsed."""
        try:
            with open(self.path, "rb") as f:
                if self._offset > f.seek(0, 2):
                    # Truncated (a new guest reuses the log): start over.
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        if not chunk:
            return 0
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            self.feed_line(raw.decode("utf-8", errors="replace"))
        return len(lines)

    def feed_line(self, line: str) -> None:
        """Parse one console line (also usable without a file)."""
        self.lines_seen += 1
        line = line.replace("\r", "").replace("\x00", "")
        for marker in PANIC_MARKERS:
            if marker in line:
                self.panic_lines.append(line.strip())
                break
        idx = line.find("ORACLE ")
        if idx < 0:
            return
        # Kernel messages can be interleaved in front of our text.
        words = line[idx:].split()
        if len(words) < 2:
            return
        kind = words[1]
        kv = dict(_KV.findall(line[idx:]))
        now = time.monotonic()
        if kind == "START":
            self.starts += 1
            self.started = True
            self.started_at = now
            self.pages = _int(kv.get("pages")) or self.pages
        elif kind == "FILLED":
            self.filled = True
            self.filled_at = now
        elif kind == "PROGRESS":
            t, verified = _float(kv.get("t")), _int(kv.get("verified"))
            rate, mism = _float(kv.get("rate")), _int(kv.get("mismatches"))
            if t is None or verified is None or rate is None or mism is None:
                return
            self.progress.append(Progress(t, verified, rate, mism))
            self.verified = max(self.verified, verified)
            self._reported_mismatches = max(self._reported_mismatches, mism)
            self.sweeps = max(self.sweeps, _int(kv.get("sweeps")) or 0)
            self.last_rate = rate
        elif kind == "SWEEP":
            bad = _int(kv.get("mismatches"))
            if bad is None:
                return
            self.sweeps += 1
            self.sweep_mismatches += bad
        elif kind == "MISMATCH":
            self._mismatch_line_count += 1
            self.mismatch_lines.append(line[idx:].strip())
        elif kind == "DONE":
            verified, mism = _int(kv.get("verified")), _int(kv.get("mismatches"))
            sweeps = _int(kv.get("sweeps"))
            if verified is None or mism is None:
                return
            self.done = True
            self.done_at = now
            self.verified = max(self.verified, verified)
            self._reported_mismatches = max(self._reported_mismatches, mism)
            if sweeps is not None:
                self.sweeps = max(self.sweeps, sweeps)
        elif kind == "EXIT":
            self.exit_code = _int(kv.get("rc"))

    def wait_for(self, predicate: Callable[[OracleMonitor], bool], timeout: float,
                 on_poll: Callable[[OracleMonitor], None] | None = None,
                 interval: float = 0.2) -> bool:
        """Poll until ``predicate(self)`` holds; False on timeout.

        ``on_poll`` runs after every poll, e.g. to check that QEMU is still
        alive (it may raise to abort the wait).
        """
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            if predicate(self):
                return True
            if on_poll is not None:
                on_poll(self)
            if time.monotonic() >= deadline:
                self.update()
                return predicate(self)
            time.sleep(interval)

    # ---------------------------------------------------------- verdict

    def verdict(self) -> Verdict:
        """PASS only if DONE was seen, with 0 mismatches and no kernel failure.

        Reads what is left in the log first, so a verdict taken after QEMU
        exited includes its last lines.
        """
        self.update()
        ok = self.done and self.mismatches == 0 and not self.kernel_panic
        text = (f"oracle: {self.verified} pages verified, {self.mismatches} mismatches, "
                f"{self.sweeps} sweeps")
        if self.kernel_panic:
            text += f", guest kernel failure: {self.panic_lines[0]!r}"
        if not self.done:
            text += ", not finished" if self.started else ", never started"
        text += ": PASS" if ok else ": FAIL"
        return Verdict(ok=ok, done=self.done, verified=self.verified,
                       mismatches=self.mismatches, sweeps=self.sweeps,
                       kernel_panic=self.kernel_panic, text=text)
