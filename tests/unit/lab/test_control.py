"""The lab's control plane, without processes: what the engine is configured with,
how agents and the lab process reach the broker, and a failed start."""

from __future__ import annotations

import configparser
from pathlib import Path
from types import SimpleNamespace

import pytest

from nova_ipmigrate.lab import control
from nova_ipmigrate.lab.control import ControlPlane, EngineProcess
from nova_ipmigrate.lab.hosts import LabHost


def _host(tmp_path: Path) -> LabHost:
    return LabHost(index=1, name="h1", netns="ipm-h1", address="10.254.0.2", prefixlen=24,
                   link=None, state_dir=tmp_path / "h1", mnt_ns=tmp_path / "ns" / "h1.mnt",
                   uts_ns=tmp_path / "ns" / "h1.uts")


def test_engine_config(tmp_path: Path) -> None:
    e = EngineProcess(tmp_path / "e", "rabbit://u:p@10.254.0.2:5672/v", ["ipm-h1", "ipm-h2"],
                      prefix=["nsenter", "--"], engine={"max_ops_per_host": 1})
    cp = configparser.ConfigParser()
    cp.read(e.write_config())
    assert cp["DEFAULT"]["transport_url"] == "rabbit://u:p@10.254.0.2:5672/v"
    assert cp["DEFAULT"]["state_path"] == str(tmp_path / "e")
    assert cp["engine"]["hosts"] == "ipm-h1,ipm-h2"
    assert cp["engine"]["host"] == control.ENGINE_HOST
    assert cp["engine"]["max_ops_per_host"] == "1"
    assert float(cp["agent"]["rpc_timeout"]) <= 10
    assert cp["oslo_messaging_rabbit"]["rabbit_interval_max"] == "2"
    cmd = e.command("db", "sync")
    assert cmd[:2] == ["nsenter", "--"] and cmd[-4:] == ["--config-file", str(e.conf),
                                                        "db", "sync"]
    assert not e.alive()
    with pytest.raises(control.ControlPlaneError, match="not running"):
        _ = e.pid


def test_api_config_and_where_it_runs(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, _host(tmp_path), ["ipm-h1"], api=True)
    a = cp.api_service
    assert a is not None and a.url == f"http://10.254.0.2:{control.API_PORT}"
    assert a.command()[0] == "nsenter" and a.transport_url == cp.transport_url
    conf = configparser.ConfigParser()
    conf.read(a.write_config())
    assert conf["api"]["auth_strategy"] == "noauth2"
    assert (conf["api"]["host"], conf["api"]["port"]) == ("10.254.0.2", str(control.API_PORT))
    assert ControlPlane(tmp_path, _host(tmp_path), ["ipm-h1"]).api_service is None
    local = control.APIProcess(tmp_path / "a", "rabbit://x")
    assert local.url == f"http://127.0.0.1:{local.port}" and local.command()[0] != "nsenter"
    with pytest.raises(control.ControlPlaneError, match="ipmigrate-api is not running"):
        _ = local.pid


def test_urls_for_hosts_and_for_the_lab_process(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path, _host(tmp_path), ["ipm-h1", "ipm-h2"])
    # the broker runs inside h1, on h1's lab address, its commands entered into h1
    assert cp.broker.node_ip_address == "10.254.0.2"
    assert cp.broker.server_command()[0] == "nsenter"
    assert cp.transport_url.startswith("rabbit://ipmigrate:")
    assert "@10.254.0.2:5672/ipmigrate" in cp.transport_url
    assert cp.agent_defaults() == {"transport_url": cp.transport_url}
    assert cp.engine.transport_url == cp.transport_url
    with pytest.raises(control.ControlPlaneError, match="not started"):
        _ = cp.local_transport_url
    with pytest.raises(control.ControlPlaneError, match="not started"):
        _ = cp.api
    cp.forward = SimpleNamespace(port=40123)  # type: ignore[assignment]
    local = cp.local_transport_url
    assert local.endswith("@127.0.0.1:40123/ipmigrate")
    assert local.split("@")[0] == cp.transport_url.split("@")[0]   # same credentials


def test_a_failed_start_stops_everything(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cp = ControlPlane(tmp_path, _host(tmp_path), ["ipm-h1"])
    stopped: list[str] = []

    def broken_start(timeout: float = 60.0) -> None:
        raise control.rabbitmq.RabbitMQError("no broker")

    monkeypatch.setattr(cp.broker, "start", broken_start)
    monkeypatch.setattr(cp.broker, "stop", lambda timeout=30.0: stopped.append("broker"))
    with pytest.raises(control.rabbitmq.RabbitMQError, match="no broker"):
        cp.start()
    assert stopped == ["broker"] and cp.forward is None and cp._transport is None
