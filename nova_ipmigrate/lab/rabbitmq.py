"""A private RabbitMQ broker as a plain child process, for tests and the lab.

Debian's ``rabbitmq-server`` package provides the programs; its service (and
``/etc/rabbitmq``, ``/var/lib/rabbitmq``, the system epmd on 4369) is never
used: everything of one broker lives under its work directory::

    <workdir>/.erlang.cookie        the node's cookie (HOME = workdir, mode 0400)
    <workdir>/rabbitmq.conf         listener, default user/vhost, no plugins
    <workdir>/rabbitmq-env.conf     empty: /etc/rabbitmq/rabbitmq-env.conf is ignored
    <workdir>/enabled_plugins       "[]."
    <workdir>/mnesia/, log/         the node's database and logs
    <workdir>/rabbitmq.out          the server's stdout and stderr

The node is ``ipm-<pid>-<n>@localhost``, with its own AMQP port, distribution
port and epmd (a private ``epmd -port N`` in the broker's process group, so
that nothing outlives :meth:`RabbitMQ.stop`). The programs are run from
``/usr/lib/rabbitmq/bin``: the ``/usr/sbin`` wrappers switch to the
``rabbitmq`` user and its home, whose cookie is not ours.

The user and vhost are created by the broker itself on its first boot
(``default_user``/``default_vhost``); they persist across :meth:`restart`,
which keeps the ports, so :attr:`transport_url` stays valid.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import string
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "epmd"
_COUNTER = itertools.count()


class RabbitMQError(RuntimeError):
    pass


def free_port(address: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _erl_tuple(address: str) -> str:
    """``127.0.0.1`` as the Erlang tuple ``{127,0,0,1}`` (IPv4 only)."""
    return "{" + ",".join(address.split(".")) + "}"


class RabbitMQ:
    """One private broker. ``with RabbitMQ(workdir) as mq: mq.transport_url``."""

    def __init__(self, workdir: Path, node_ip_address: str = "127.0.0.1",
                 port: int | None = None, dist_port: int | None = None,
                 epmd_port: int | None = None, nodename: str | None = None,
                 user: str = "ipmigrate", password: str | None = None,
                 vhost: str = "ipmigrate", prefix: list[str] | None = None,
                 server: str = SERVER, ctl: str = CTL, epmd: str = EPMD,
                 netns: str | os.PathLike[str] | None = None) -> None:
        self.workdir = Path(workdir)
        #: the address of the AMQP listener (what clients connect to)
        self.node_ip_address = node_ip_address
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.epmd_port = epmd_port or free_port()
        self.nodename = nodename or f"ipm-{os.getpid()}-{next(_COUNTER)}@localhost"
        self.user = user
        self.password = password or secrets.token_hex(16)
        self.vhost = vhost
        #: command prefix, e.g. to run inside a lab host's namespaces
        self.prefix = list(prefix or [])
        #: the network namespace the broker runs in (with ``prefix``), for the
        #: readiness checks of this process; None: this process's
        self.netns = netns
        self.server, self.ctl, self.epmd = server, ctl, epmd
        self.log = self.workdir / "rabbitmq.out"
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        #: seconds the last start took until the broker answered
        self.start_seconds: float | None = None

    # -- what is run -----------------------------------------------------------------

    @property
    def transport_url(self) -> str:
        host = f"[{self.node_ip_address}]" if ":" in self.node_ip_address \
            else self.node_ip_address
        q = urllib.parse.quote
        return (f"rabbit://{q(self.user, safe='')}:{q(self.password, safe='')}@{host}:"
                f"{self.port}/{q(self.vhost, safe='')}")

    def env(self) -> dict[str, str]:
        """The environment of the server and of every rabbitmqctl."""
        w = self.workdir
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(w),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.node_ip_address,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
        })
        # the distribution port (rabbitmqctl's way in) on loopback only: the node is
        # @localhost, so the CLI connects there, wherever the AMQP listener is
        env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = (
            f"-kernel inet_dist_use_interface {_erl_tuple('127.0.0.1')}")
        return env

    def config_text(self) -> str:
        return "\n".join([
            "# written by nova_ipmigrate.lab.rabbitmq",
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            f"default_vhost = {self.vhost}",
            "default_permissions.configure = .*",
            "default_permissions.read = .*",
            "default_permissions.write = .*",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = info",
            "",
        ])

    def server_command(self) -> list[str]:
        return [*self.prefix, self.server]

    def epmd_command(self) -> list[str]:
        return [*self.prefix, self.epmd, "-port", str(self.epmd_port),
                "-address", "127.0.0.1"]

    def ctl_command(self, *args: str) -> list[str]:
        return [*self.prefix, self.ctl, "-n", self.nodename, *args]

    def write_files(self) -> None:
        w = self.workdir
        for d in (w, w / "mnesia", w / "log"):
            d.mkdir(parents=True, exist_ok=True)
        cookie = w / ".erlang.cookie"
        if not cookie.exists():
            alphabet = string.ascii_uppercase
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write("".join(secrets.choice(alphabet) for _ in range(32)))
        (w / "rabbitmq.conf").write_text(self.config_text())
        (w / "rabbitmq-env.conf").write_text("# empty: not /etc/rabbitmq/rabbitmq-env.conf\n")
        (w / "enabled_plugins").write_text("[].\n")

    # -- lifecycle -------------------------------------------------------------------

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ctl_run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE args...`` against this broker."""
        return subprocess.run(self.ctl_command(*args), env=self.env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=self.workdir)

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker; returns when it accepts connections. On failure nothing
        is left running."""
        if self.alive():
            return
        t0 = time.monotonic()
        try:
            self.write_files()
            env = self.env()
            if self._epmd is None or self._epmd.poll() is not None:
                self._epmd = subprocess.Popen(
                    self.epmd_command(), env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, cwd=self.workdir)
            with open(self.log, "ab") as out:
                self._proc = subprocess.Popen(
                    self.server_command(), env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir)
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        # The AMQP listener opens near the end of the boot; then await_startup
        # confirms that the boot finished.
        while not self._port_open():
            self._check_running()
            if time.monotonic() > deadline:
                raise RabbitMQError(f"RabbitMQ {self.nodename} did not listen on "
                                    f"{self.node_ip_address}:{self.port}: {self.tail()}")
            time.sleep(0.1)
        left = max(5.0, deadline - time.monotonic())
        try:
            res = self.ctl_run("await_startup", "--timeout", str(int(left)),
                               timeout=left + 10)
        except subprocess.TimeoutExpired as exc:
            raise RabbitMQError(f"rabbitmqctl await_startup hung: {self.tail()}") from exc
        if res.returncode != 0:
            raise RabbitMQError(f"rabbitmqctl await_startup failed ({res.returncode}): "
                                f"{res.stdout}{res.stderr}{self.tail()}")

    def _check_running(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RabbitMQError(f"rabbitmq-server exited with {self._proc.returncode}: "
                                f"{self.tail()}")

    def _port_open(self) -> bool:
        family = socket.AF_INET6 if ":" in self.node_ip_address else socket.AF_INET
        if self.netns is not None:
            from nova_ipmigrate.lab import netns
            try:
                netns.connect_in(self.netns, (self.node_ip_address, self.port), 0.5).close()
                return True
            except OSError:
                return False
        with socket.socket(family) as s:
            s.settimeout(0.5)
            try:
                s.connect((self.node_ip_address, self.port))
                return True
            except OSError:
                return False

    def tail(self, chars: int = 3000) -> str:
        out = []
        for path in [self.log, *sorted((self.workdir / "log").glob("*.log"))]:
            try:
                out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
            except OSError:
                pass
        return "\n".join(out)

    def _stop_server(self, timeout: float, hard: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        grace = 0.0
        if proc.poll() is None and not hard:
            try:
                # once the node agreed to stop, give it the time to do so; a node that
                # does not answer gets SIGTERM at once
                if self.ctl_run("stop", timeout=timeout).returncode == 0:
                    grace = timeout
            except (OSError, subprocess.TimeoutExpired):
                pass
        if hard:
            _end_group(proc, 0, (signal.SIGKILL,))
        else:
            _end_group(proc, grace)
        # A killed beam may hold its listener a moment longer than the script that
        # started it lives: a restart must not take that for the new node.
        deadline = time.monotonic() + 15
        while self._port_open() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (``rabbitmqctl stop``, then its process group) and its
        epmd. Idempotent; the work directory stays."""
        try:
            self._stop_server(timeout, hard=False)
        finally:
            epmd, self._epmd = self._epmd, None
            if epmd is not None:
                _end_group(epmd, 0)

    def restart(self, timeout: float = 60.0, hard: bool = False, down: float = 0.0) -> None:
        """Stop the broker (``hard``: SIGKILL, no clean shutdown), stay down ``down``
        seconds, start it again on the same ports with the same users and vhost."""
        self._stop_server(30.0, hard)
        if down > 0:
            time.sleep(down)
        self.start(timeout)

    def __enter__(self) -> RabbitMQ:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _end_group(proc: subprocess.Popen[bytes], grace: float,
               signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)) -> None:
    """Wait ``grace`` seconds for ``proc`` to exit, then send ``signals`` in turn to
    its process group (it leads its own session), reap it, and kill what is left of
    the group."""
    if grace > 0:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    for sig in signals:
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if proc.poll() is None:
        proc.wait(5)
