"""The run loop the daemons share: start, serve until SIGTERM/SIGINT or shutdown, stop."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def serve(prog: str, start: Callable[[], str], stop: Callable[[], None],
          done: threading.Event) -> int:
    """Run ``start`` (returns the ready banner), wait for ``done`` or a signal, ``stop``."""

    def _signal(signum: int, _frame: object) -> None:
        LOG.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    try:
        print(start(), flush=True)
        while not done.wait(1.0):
            pass
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        stop()
    return 0


def exit_on_sigterm() -> None:
    """For the lab tools: SIGTERM ends the program like Ctrl-C, through its cleanups
    (the lab, QEMU, libvirtd, mounts), instead of killing it on the spot."""
    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _raise)
