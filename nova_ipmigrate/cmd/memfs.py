"""``ipmigrate-memfs``: run memfs as a standalone daemon with its control socket.

The agent will embed the same :class:`~nova_ipmigrate.memfs.server.MemFS`;
this command serves one host's guest RAM on its own (the single-host demo,
tests, and operators trying memfs out). SIGTERM/SIGINT or the control
socket's ``shutdown`` stop it cleanly.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from oslo_config import cfg
from oslo_log import log as logging

from nova_ipmigrate import conf
from nova_ipmigrate.memfs.control import ControlServer
from nova_ipmigrate.memfs.server import MemFS, MemfsConfig

LOG = logging.getLogger(__name__)
CONF = conf.CONF


def main(argv: list[str] | None = None) -> int:
    logging.register_options(CONF)
    CONF(sys.argv[1:] if argv is None else argv, project="nova-ipmigrate")
    logging.setup(CONF, "nova-ipmigrate")
    fs = MemFS(MemfsConfig.from_conf(CONF.memfs))
    done = threading.Event()
    control = ControlServer(fs, Path(CONF.memfs.control_socket), done.set)

    def _signal(signum: int, _frame: object) -> None:
        LOG.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    try:
        fs.start()
        control.start()
        print(f"memfs ready on {CONF.memfs.mountpoint} "
              f"(control socket {CONF.memfs.control_socket})", flush=True)
        while not done.wait(1.0):
            pass
    except cfg.Error as exc:
        print(f"ipmigrate-memfs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ipmigrate-memfs: {exc}", file=sys.stderr)
        return 1
    finally:
        control.stop()
        fs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
