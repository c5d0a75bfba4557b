"""The real ``ipmigrate-api`` WSGI app with a fake engine, served on a loopback port
(``noauth2``, page size 2): the ``served`` fixture of the CLI tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref import simple_server

import pytest
from oslo_config import cfg

from nova_ipmigrate.api import app as api_app
from nova_ipmigrate.cmd.api import _Quiet, _Server
from nova_ipmigrate.conf import api as api_conf
from tests.unit.api.test_app import FakeEngine


class Served:
    def __init__(self, engine: FakeEngine, url: str) -> None:
        self.engine = engine
        self.url = url


@pytest.fixture
def served() -> Iterator[Served]:
    engine = FakeEngine()
    conf = cfg.ConfigOpts()
    api_conf.register_opts(conf)
    conf([], project="nova-ipmigrate-test")
    conf.set_override("auth_strategy", "noauth2", group="api")
    conf.set_override("max_limit", 2, group="api")
    server = simple_server.make_server("127.0.0.1", 0, api_app.make_app(conf, engine=engine),
                                       server_class=_Server, handler_class=_Quiet)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    try:
        yield Served(engine, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
