"""``ipmigrate-memfs``: run memfs as a standalone daemon with its control socket.

The agent embeds the same :class:`~nova_ipmigrate.memfs.server.MemFS`; this
command serves one host's guest RAM on its own (the single-host demo, tests,
and operators trying memfs out). SIGTERM/SIGINT or the control socket's
``shutdown`` stop it cleanly.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from oslo_config import cfg
from oslo_log import log as logging

from nova_ipmigrate import conf
from nova_ipmigrate.cmd.daemon import serve
from nova_ipmigrate.memfs.control import ControlServer
from nova_ipmigrate.memfs.server import MemFS, MemfsConfig

CONF = conf.CONF


def main(argv: list[str] | None = None) -> int:
    logging.register_options(CONF)
    try:
        CONF(sys.argv[1:] if argv is None else argv, project="nova-ipmigrate")
        logging.setup(CONF, "nova-ipmigrate")
        fs = MemFS(MemfsConfig.from_conf(CONF.memfs))
    except (cfg.Error, ValueError) as exc:
        print(f"ipmigrate-memfs: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    control = ControlServer(fs, Path(CONF.memfs.control_socket), done.set)

    def start() -> str:
        fs.start()
        control.start()
        return (f"memfs ready on {CONF.memfs.mountpoint} "
                f"(control socket {CONF.memfs.control_socket})")

    def stop() -> None:
        control.stop()
        fs.stop()

    return serve("ipmigrate-memfs", start, stop, done)


if __name__ == "__main__":
    sys.exit(main())
