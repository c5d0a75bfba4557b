"""The private RabbitMQ broker: what it runs and with which environment (no broker)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from nova_ipmigrate.lab import rabbitmq
from nova_ipmigrate.lab.rabbitmq import RabbitMQ, RabbitMQError


@pytest.fixture
def mq(tmp_path: Path) -> RabbitMQ:
    return RabbitMQ(tmp_path / "mq", port=5701, dist_port=5702, epmd_port=5703,
                    nodename="ipm-t@localhost", password="pw")


def test_environment(mq: RabbitMQ, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_NODENAME", "rabbit@elsewhere")
    monkeypatch.setenv("ERL_EPMD_PORT", "4369")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = mq.env()
    w = str(mq.workdir)
    assert env["HOME"] == w and env["PATH"] == "/usr/bin"
    assert env["RABBITMQ_NODENAME"] == "ipm-t@localhost"
    assert env["ERL_EPMD_PORT"] == "5703"
    assert (env["RABBITMQ_NODE_IP_ADDRESS"], env["RABBITMQ_NODE_PORT"],
            env["RABBITMQ_DIST_PORT"]) == ("127.0.0.1", "5701", "5702")
    assert env["RABBITMQ_MNESIA_BASE"] == f"{w}/mnesia"
    assert env["RABBITMQ_LOG_BASE"] == f"{w}/log"
    assert env["RABBITMQ_CONFIG_FILE"] == f"{w}/rabbitmq.conf"
    assert env["RABBITMQ_CONF_ENV_FILE"] == f"{w}/rabbitmq-env.conf"
    assert env["RABBITMQ_ENABLED_PLUGINS_FILE"] == f"{w}/enabled_plugins"
    assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == \
        "-kernel inet_dist_use_interface {127,0,0,1}"
    assert not [k for k in env if k.startswith("RABBITMQ_") and w not in env[k]
                and k not in ("RABBITMQ_NODENAME", "RABBITMQ_NODE_IP_ADDRESS",
                              "RABBITMQ_NODE_PORT", "RABBITMQ_DIST_PORT",
                              "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS")]


def test_another_address(tmp_path: Path) -> None:
    mq = RabbitMQ(tmp_path, node_ip_address="10.254.0.1", port=1, dist_port=2, epmd_port=3)
    env = mq.env()
    assert env["RABBITMQ_NODE_IP_ADDRESS"] == "10.254.0.1"
    # AMQP on the given address; the distribution port (rabbitmqctl) stays on
    # loopback, where the CLI finds the @localhost node
    assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].endswith("{127,0,0,1}")
    assert mq.transport_url.startswith("rabbit://ipmigrate:") and \
        mq.transport_url.endswith("@10.254.0.1:1/ipmigrate")
    assert RabbitMQ(tmp_path, node_ip_address="0.0.0.0").env()[
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].endswith("{127,0,0,1}")


def test_defaults_are_private(tmp_path: Path) -> None:
    a, b = RabbitMQ(tmp_path / "a"), RabbitMQ(tmp_path / "b")
    assert a.nodename != b.nodename and a.nodename.startswith(f"ipm-{os.getpid()}-")
    assert a.nodename.endswith("@localhost")
    assert len({a.port, a.dist_port, a.epmd_port}) == 3
    assert a.password != b.password and len(a.password) == 32


def test_transport_url_quoting(tmp_path: Path) -> None:
    mq = RabbitMQ(tmp_path, node_ip_address="::1", port=5672, user="u@x", password="p/w:",
                  vhost="/")
    assert mq.transport_url == "rabbit://u%40x:p%2Fw%3A@[::1]:5672/%2F"


def test_commands(mq: RabbitMQ) -> None:
    assert mq.server_command() == [rabbitmq.SERVER]
    assert mq.ctl_command("await_startup") == [rabbitmq.CTL, "-n", "ipm-t@localhost",
                                               "await_startup"]
    assert mq.epmd_command() == ["epmd", "-port", "5703", "-address", "127.0.0.1"]
    assert rabbitmq.SERVER.startswith("/usr/lib/rabbitmq/bin/")  # not the /usr/sbin wrapper
    mq.prefix = ["nsenter", "-t", "1", "-n"]
    assert mq.server_command()[:4] == ["nsenter", "-t", "1", "-n"]
    assert mq.ctl_command("stop")[4:] == [rabbitmq.CTL, "-n", "ipm-t@localhost", "stop"]


def test_files(mq: RabbitMQ) -> None:
    mq.write_files()
    w = mq.workdir
    cookie = w / ".erlang.cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400
    value = cookie.read_text()
    assert len(value) == 32 and value.isalpha() and value.isupper()
    mq.write_files()
    assert cookie.read_text() == value, "the cookie survives a restart"
    conf = (w / "rabbitmq.conf").read_text()
    for line in ("default_user = ipmigrate", "default_pass = pw",
                 "default_vhost = ipmigrate", "default_permissions.configure = .*"):
        assert line in conf.splitlines()
    assert (w / "enabled_plugins").read_text() == "[].\n"
    assert (w / "mnesia").is_dir() and (w / "log").is_dir()


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_server_that_dies_is_reported_and_nothing_is_left(tmp_path: Path) -> None:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    mq = RabbitMQ(tmp_path / "mq", server=_script(bin_ / "server", "echo boom; exit 3"),
                  epmd=_script(bin_ / "epmd", "exec sleep 600"),
                  ctl=_script(bin_ / "ctl", "exit 0"))
    with pytest.raises(RabbitMQError, match="(?s)exited with 3.*boom"):
        mq.start(timeout=10)
    assert not mq.alive() and mq._epmd is None and mq._proc is None
    mq.stop()  # idempotent


def test_a_server_that_never_listens_is_killed(tmp_path: Path) -> None:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    pidfile = tmp_path / "server.pid"
    mq = RabbitMQ(tmp_path / "mq", server=_script(bin_ / "server",
                                                  f"echo $$ > {pidfile}; exec sleep 600"),
                  epmd=_script(bin_ / "epmd", "exec sleep 600"),
                  ctl=_script(bin_ / "ctl", "exit 69"))  # node unreachable
    with pytest.raises(RabbitMQError, match="did not listen"):
        mq.start(timeout=1)
    pid = int(pidfile.read_text())
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    assert not mq.alive()


def test_stop_before_start(mq: RabbitMQ) -> None:
    mq.stop()
    mq.stop()
    assert not mq.alive() and mq.start_seconds is None
