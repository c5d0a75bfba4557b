"""nova_ipmigrate.rpc: process-wide transports, option registration, the notifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import oslo_messaging as messaging
import pytest
from oslo_config import cfg

from nova_ipmigrate import rpc


@pytest.fixture
def conf() -> Iterator[cfg.ConfigOpts]:
    c = cfg.ConfigOpts()
    c([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    rpc.register_opts(c)
    yield c
    rpc.cleanup()


def test_transport_configured(conf: cfg.ConfigOpts, tmp_path: Path) -> None:
    assert conf.transport_url == "rabbit://"  # oslo.messaging's default: not configured
    assert not rpc.transport_configured(conf)
    conf.set_override("transport_url", "fake://")
    assert rpc.transport_configured(conf)
    rpc.register_opts(conf)  # twice is fine
    assert conf.rpc_response_timeout == 60
    path = tmp_path / "a.conf"
    path.write_text("[DEFAULT]\ntransport_url = rabbit://u:p@h:5672/v\n")
    from_file = cfg.ConfigOpts()
    rpc.register_opts(from_file)
    from_file(["--config-file", str(path)], project="nova-ipmigrate")
    assert rpc.transport_configured(from_file)


def test_init_and_cleanup(conf: cfg.ConfigOpts) -> None:
    assert not rpc.initialized()
    with pytest.raises(RuntimeError, match="init"):
        rpc.get_transport()
    conf.set_override("transport_url", "fake://")
    rpc.init(conf)
    assert rpc.initialized() and rpc.TRANSPORT is not None
    assert rpc.NOTIFICATION_TRANSPORT is not None and rpc.NOTIFIER is not None
    assert rpc.TRANSPORT._driver._allowed_remote_exmods == rpc.get_allowed_exmods()
    transports = [rpc.TRANSPORT, rpc.NOTIFICATION_TRANSPORT]
    with mock.patch.object(messaging.Transport, "cleanup", autospec=True) as cleanup:
        rpc.init(conf)  # again: the first ones are released
    assert [c.args[0] for c in cleanup.call_args_list] == transports
    rpc.cleanup()
    assert not rpc.initialized() and rpc.NOTIFIER is None
    rpc.cleanup()  # idempotent


def test_notifier(conf: cfg.ConfigOpts) -> None:
    with pytest.raises(RuntimeError):
        rpc.get_notifier("ipmigrate-engine", "h1")
    conf.set_override("transport_url", "fake://")
    rpc.init(conf)
    notifier = rpc.get_notifier("ipmigrate-engine", "h1")
    assert notifier.publisher_id == "ipmigrate-engine.h1"
    notifier.info({}, "ipmigrate.test", {"a": 1})  # the default driver: none (noop)
