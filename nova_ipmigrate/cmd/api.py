"""``ipmigrate-api``: the REST service, on a threading WSGI server.

Production may run ``nova_ipmigrate.api.wsgi:application`` under uwsgi instead
(``nova_ipmigrate/api/wsgi.py``).
"""

from __future__ import annotations

import signal
import socketserver
import sys
import threading
from typing import Any
from wsgiref import simple_server

from oslo_config import cfg
from oslo_log import log as logging

from nova_ipmigrate import conf, rpc
from nova_ipmigrate.api.app import make_app

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        LOG.info("%s %s", self.address_string(), format % args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.register_options(CONF)
    rpc.register_opts(CONF)
    try:
        CONF(args, project="nova-ipmigrate")
        logging.setup(CONF, "nova-ipmigrate")
        app = make_app(CONF)
        server = simple_server.make_server(CONF.api.host, CONF.api.port, app,
                                           server_class=_Server, handler_class=_Quiet)
    except (cfg.Error, OSError, ValueError) as exc:
        print(f"ipmigrate-api: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("ipmigrate-api listening on %s:%s", CONF.api.host, CONF.api.port)
    print(f"ipmigrate-api ready on {CONF.api.host}:{CONF.api.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
