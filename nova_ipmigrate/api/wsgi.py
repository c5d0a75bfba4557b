"""The API as a WSGI application for uwsgi or mod_wsgi:
``nova_ipmigrate.api.wsgi:application`` (``ipmigrate-api`` is the same app on a
threading WSGI server of its own).

The configuration is read on the first request (each uwsgi worker reads its own):
the files named in ``IPMIGRATE_CONFIG_FILES`` (comma separated), else oslo.config's
default search (``/etc/nova-ipmigrate/nova-ipmigrate.conf``...). For example::

    uwsgi --http-socket :9890 --module nova_ipmigrate.api.wsgi:application \\
          --env IPMIGRATE_CONFIG_FILES=/etc/nova-ipmigrate/nova-ipmigrate.conf
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from oslo_log import log as logging

from nova_ipmigrate import conf, rpc
from nova_ipmigrate.api.app import make_app

CONFIG_FILES_ENV = "IPMIGRATE_CONFIG_FILES"
_lock = threading.Lock()
_app: Any = None


def init_application(environ: dict[str, str] | None = None) -> Any:
    """Read the configuration, set up logging, build the app."""
    env = os.environ if environ is None else environ
    files = [f.strip() for f in env.get(CONFIG_FILES_ENV, "").split(",") if f.strip()]
    CONF = conf.CONF
    logging.register_options(CONF)
    rpc.register_opts(CONF)
    CONF([], project="nova-ipmigrate", default_config_files=files or None)
    logging.setup(CONF, "nova-ipmigrate")
    return make_app(CONF)


def application(environ: dict[str, Any], start_response: Callable[..., Any]
                ) -> Iterable[bytes]:
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                _app = init_application()
    result: Iterable[bytes] = _app(environ, start_response)
    return result
