"""A watchdog that aborts a memfs connection when its daemon dies.

A daemon killed while one of its threads sends an invalidation cannot finish
dying: that thread waits in the kernel for a launder WRITE that only the
(dead) reader threads could answer, so ``/dev/fuse`` is never closed and every
guest faulting on the mount hangs. This small process gets SIGTERM from the
kernel when the daemon's main thread exits (``PR_SET_PDEATHSIG``) and aborts
the connection through fusectl; guests then get errors instead of hanging. On
a clean shutdown the mount is gone first and the abort is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys

from nova_ipmigrate.memfs import mount as mnt

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Own session: a kill of the daemon's process group must not take the watchdog too.
    os.setsid()
    # SIGTERM stays blocked (the mask survives exec) until main() has its handler: a
    # daemon that dies while the watchdog's Python still starts would otherwise kill
    # it by SIGTERM's default action, with the connection never aborted
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(conn: int) -> subprocess.Popen[bytes]:
    """Start a watchdog for FUSE connection ``conn`` owned by this process."""
    return subprocess.Popen(
        [sys.executable, "-m", "nova_ipmigrate.memfs.watchdog", str(conn), str(os.getpid())],
        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, close_fds=True)


def main(argv: list[str]) -> int:
    conn, parent = int(argv[0]), int(argv[1])

    def _abort(*_: object) -> None:
        if (mnt.FUSECTL_ROOT / str(conn)).exists():
            mnt.abort_connection(conn)
        os._exit(0)

    signal.signal(signal.SIGTERM, _abort)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a SIGTERM that came while Python started is delivered here, to the handler
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if os.getppid() != parent:  # the daemon died before the prctl took effect
        _abort()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
