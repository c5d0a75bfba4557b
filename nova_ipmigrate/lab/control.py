"""The lab's control plane: RabbitMQ and ``ipmigrate-engine`` inside a lab host.

The controller host (h1 by default, as devstack's first node is also a compute
host) runs a private broker (:class:`~nova_ipmigrate.lab.rabbitmq.RabbitMQ`)
listening on the host's lab address, so that every host's agent reaches it,
and the engine process with its SQLite database under ``<workdir>``. The lab
process itself (the demo, the tests) reaches the broker through a
:class:`~nova_ipmigrate.lab.netns.PortForward` on a loopback port and talks to
the engine with :class:`~nova_ipmigrate.engine.rpcapi.EngineAPI`, as any other
client of the engine would::

    cp = ControlPlane(workdir, controller_host, hosts=[h.hostname for h in hosts])
    cp.start()
    agent = AgentDaemon(..., defaults=cp.agent_defaults())
    agent.extra_sections.update(cp.rabbit_sections())
    op = cp.api.partial_migration(ctxt, vm, "ipm-h2", dest_host="ipm-h4")
    cp.kill_engine(); cp.start_engine()      # the engine's crash and restart
    cp.broker.restart(hard=True)             # the broker's

Everything is stopped by :meth:`ControlPlane.stop` (also after a failed start);
the lab's ``down`` kills whatever a crashed lab process left in the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_messaging import opts as messaging_opts

from nova_ipmigrate import rpc
from nova_ipmigrate.agent.rpcapi import AgentAPI
from nova_ipmigrate.conf import agent as agent_conf
from nova_ipmigrate.engine import client
from nova_ipmigrate.engine.rpcapi import EngineAPI
from nova_ipmigrate.lab import rabbitmq
from nova_ipmigrate.lab.hosts import NETNS_DIR, LabHost
from nova_ipmigrate.lab.netns import PortForward

#: reconnect quickly after a broker restart (oslo.messaging's defaults back off to 30 s)
RABBIT_OPTS: dict[str, Any] = {"rabbit_retry_interval": 1, "rabbit_retry_backoff": 1,
                               "rabbit_interval_max": 2}
ENGINE_HOST = "lab-engine"
#: ipmigrate-api's port on the controller host (the ``[api] port`` default)
API_PORT = 9890
#: the topic the lab's engine sends its notifications to (and the lab listens on)
NOTIFICATION_TOPIC = "ipmigrate_notifications"


class NotificationLog:
    """The engine's notifications as the lab receives them (a notification listener
    endpoint): ``events`` is a list of ``(event_type, payload data)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _add(self, event_type: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((event_type, dict(payload.get("ipmigrate_object.data") or {})))

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: dict[str, Any],
             metadata: Any) -> None:
        self._add(event_type, payload)

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: dict[str, Any],
              metadata: Any) -> None:
        self._add(event_type, payload)

    def of(self, op_id: str) -> list[str]:
        """The event types received for one operation, in order."""
        with self._lock:
            return [t for t, d in self.events if d.get("id") == op_id]


class ControlPlaneError(RuntimeError):
    pass


def context() -> oslo_context.RequestContext:
    """A request context for the lab's calls (the lab acts as the cloud admin)."""
    return oslo_context.RequestContext(is_admin=True, roles=["admin"])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> int | None:
    """SIGTERM a service child (started with ``start_new_session``) and wait; SIGKILL
    to its process group past ``timeout``. Its exit status, None if it was killed."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return None
    return proc.returncode


class ServiceProcess:
    """A service of ours as a child process (``prefix``: inside a lab host), its
    output in ``<workdir>/<name>.out`` and its log in ``<name>.log``: started until
    it prints its ready banner, stopped with SIGTERM, killed as a crash would."""

    #: the service's name (``engine``, ``api``) and its console script's module
    name = ""
    module = ""

    def __init__(self, workdir: Path, transport_url: str, prefix: Sequence[str] = ()
                 ) -> None:
        self.workdir = Path(workdir)
        self.transport_url = transport_url
        self.prefix = list(prefix)
        self.conf = self.workdir / f"{self.name}.conf"
        self.out = self.workdir / f"{self.name}.out"
        self.log_file = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        raise NotImplementedError

    def banner(self) -> bytes:
        """What the service prints when it is ready."""
        raise NotImplementedError

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, sys.executable, "-m", self.module,
                "--config-file", str(self.conf), *args]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ControlPlaneError(f"ipmigrate-{self.name} is not running")
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the service; returns when it says it is ready."""
        if self.alive():
            return
        self.write_config()
        start = self.out.stat().st_size if self.out.exists() else 0
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        banner = self.banner()
        while True:
            with open(self.out, "rb") as f:
                f.seek(start)
                if banner in f.read():
                    return
            if self.proc.poll() is not None:
                raise ControlPlaneError(f"ipmigrate-{self.name} exited with "
                                        f"{self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ControlPlaneError(f"ipmigrate-{self.name} not ready in "
                                        f"{timeout:.0f}s: {self.tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9`` (a crash: nothing is cleaned up)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL past ``timeout``); the exit status, None if killed."""
        proc, self.proc = self.proc, None
        return stop_process(proc, timeout)

    def tail(self, chars: int = 4000) -> str:
        out = []
        for path in (self.out, self.log_file):
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


class EngineProcess(ServiceProcess):
    """``ipmigrate-engine`` (its database: SQLite under ``workdir``)."""

    name = "engine"
    module = "nova_ipmigrate.cmd.engine"

    def __init__(self, workdir: Path, transport_url: str, hosts: Sequence[str],
                 prefix: Sequence[str] = (), host: str = ENGINE_HOST,
                 engine: dict[str, Any] | None = None) -> None:
        super().__init__(workdir, transport_url, prefix)
        self.hosts = list(hosts)
        self.host = host
        self.engine_options = {"host": host, "hosts": ",".join(self.hosts),
                               "poll_interval": 0.2, "progress_interval": 1,
                               **(engine or {})}

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = ["[DEFAULT]", f"state_path = {self.workdir}",
                 f"transport_url = {self.transport_url}", f"log_file = {self.log_file}",
                 "[engine]", *(f"{k} = {v}" for k, v in self.engine_options.items()),
                 # a dead agent (the lab kills some) must not stall every request long
                 "[agent]", "rpc_timeout = 5",
                 "[oslo_messaging_notifications]", "driver = messagingv2",
                 f"topics = {NOTIFICATION_TOPIC}",
                 "[oslo_messaging_rabbit]", *(f"{k} = {v}" for k, v in RABBIT_OPTS.items())]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    def banner(self) -> bytes:
        return f"engine {self.host} ready".encode()

    def sync(self) -> None:
        """``ipmigrate-engine db sync``."""
        self.write_config()
        out = subprocess.run(self.command("db", "sync"), capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ControlPlaneError(f"ipmigrate-engine db sync failed: {out.stdout}"
                                    f"{out.stderr}")


class APIProcess(ServiceProcess):
    """``ipmigrate-api`` listening on ``host:port``, ``noauth2`` (the token is
    ``user:project``; the user ``admin`` is the cloud admin). ``url`` is where this
    process reaches it (a forward's address when it runs inside a lab host)."""

    name = "api"
    module = "nova_ipmigrate.cmd.api"

    def __init__(self, workdir: Path, transport_url: str, host: str = "127.0.0.1",
                 port: int | None = None, prefix: Sequence[str] = ()) -> None:
        super().__init__(workdir, transport_url, prefix)
        self.host = host
        self.port = port if port is not None else free_port()
        self.url = f"http://{host}:{self.port}"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            "[DEFAULT]", f"transport_url = {self.transport_url}",
            f"log_file = {self.log_file}",
            "[api]", f"host = {self.host}", f"port = {self.port}", "auth_strategy = noauth2",
            "[oslo_messaging_rabbit]",
            *(f"{k} = {v}" for k, v in RABBIT_OPTS.items())]) + "\n")
        return self.conf

    def banner(self) -> bytes:
        return b"ipmigrate-api ready on"

    def request(self, method: str, path: str, body: Any = None, token: str = "admin:admin",
                raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        """One HTTP request; its status and JSON body (errors too)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"X-Auth-Token": token,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def free_port() -> int:
    """A free loopback TCP port (for a service this process starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_conf() -> cfg.ConfigOpts:
    """A private ConfigOpts for the lab's RPC clients (quick reconnects)."""
    conf = cfg.ConfigOpts()
    rpc.register_opts(conf)
    agent_conf.register_opts(conf)
    for group, opts in messaging_opts.list_opts():
        if group == "oslo_messaging_rabbit":
            conf.register_opts(opts, group=group)
    conf([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    for name, value in RABBIT_OPTS.items():
        conf.set_override(name, value, group="oslo_messaging_rabbit")
    return conf


class ControlPlane:
    """Broker, engine and the lab's engine client, on the controller host."""

    def __init__(self, workdir: Path, controller: LabHost, hosts: Sequence[str],
                 engine: dict[str, Any] | None = None, rpc_timeout: float = 30.0,
                 api: bool = False) -> None:
        self.workdir = Path(workdir)
        self.controller = controller
        self.hosts = list(hosts)
        self.netns = NETNS_DIR / controller.netns
        prefix = controller.enter_command([], cwd=self.workdir)
        self.broker = rabbitmq.RabbitMQ(self.workdir / "rabbitmq",
                                        node_ip_address=controller.address, port=5672,
                                        prefix=prefix, netns=self.netns)
        self.engine = EngineProcess(self.workdir / "engine", self.broker.transport_url,
                                    self.hosts, prefix=prefix, engine=engine)
        #: ``ipmigrate-api`` next to the engine (``api=True``); its ``url`` is a
        #: forward on this process's loopback once started
        self.api_service = (APIProcess(self.workdir / "api", self.broker.transport_url,
                                       host=controller.address, port=API_PORT, prefix=prefix)
                            if api else None)
        self._api_forward: PortForward | None = None
        self.rpc_timeout = rpc_timeout
        self.forward: PortForward | None = None
        self._transport: Any = None
        self._api: EngineAPI | None = None
        self._agents: AgentAPI | None = None
        #: the engine's notifications, received since :meth:`start`
        self.notifications = NotificationLog()
        self._listener: Any = None

    # -- what agents and clients are given ------------------------------------------

    @property
    def transport_url(self) -> str:
        """The broker as the lab's hosts reach it."""
        return self.broker.transport_url

    @property
    def local_transport_url(self) -> str:
        """The broker as this (root namespace) process reaches it: through the forward."""
        if self.forward is None:
            raise ControlPlaneError("the control plane is not started")
        u = urllib.parse.urlsplit(self.broker.transport_url)
        netloc = f"{u.netloc.rsplit('@', 1)[0]}@127.0.0.1:{self.forward.port}"
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))

    def agent_defaults(self) -> dict[str, Any]:
        """``[DEFAULT]`` options of the agents."""
        return {"transport_url": self.transport_url}

    @staticmethod
    def rabbit_sections() -> dict[str, dict[str, Any]]:
        return {"oslo_messaging_rabbit": dict(RABBIT_OPTS)}

    @property
    def api(self) -> EngineAPI:
        if self._api is None:
            raise ControlPlaneError("the control plane is not started")
        return self._api

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Broker, forward, database and engine; on failure everything is stopped."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.broker.start()
            self.forward = PortForward(self.netns, (self.controller.address,
                                                    self.broker.port))
            self._transport = rpc.get_rpc_transport(client_conf(),
                                                    url=self.local_transport_url)
            self._api = EngineAPI(self._transport, timeout=self.rpc_timeout)
            self._agents = AgentAPI(client_conf(), transport=self._transport, timeout=3)
            self._listen()
            self.engine.sync()
            self.engine.start()
            if self.api_service is not None:
                self.api_service.start()
                self._api_forward = PortForward(self.netns, (self.controller.address,
                                                             API_PORT))
                self.api_service.url = f"http://127.0.0.1:{self._api_forward.port}"
        except BaseException:
            self.stop()
            raise

    def _listen(self) -> None:
        ntransport = messaging.get_notification_transport(client_conf(),
                                                          url=self.local_transport_url)
        self._listener = messaging.get_notification_listener(
            ntransport, [messaging.Target(topic=NOTIFICATION_TOPIC)], [self.notifications],
            executor="threading", pool="lab")
        self._listener.start()
        self._ntransport = ntransport

    def wait_agents(self, hosts: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        """Until every host's agent answers over RPC (its server connects after it
        starts)."""
        if self._agents is None:
            raise ControlPlaneError("the control plane is not started")
        deadline = time.monotonic() + timeout
        for host in self.hosts if hosts is None else hosts:
            while True:
                try:
                    self._agents.parts(context(), host)
                    break
                except Exception as exc:  # noqa: BLE001 - not connected yet
                    if time.monotonic() > deadline:
                        raise ControlPlaneError(f"the agent on {host} does not answer over "
                                                f"RPC: {exc!r}") from exc
                    time.sleep(0.2)

    def run(self, op: dict[str, Any], timeout: float = 600.0,
            on_progress: Any = None) -> dict[str, Any]:
        """Wait for an engine operation to end; its final dict."""
        return client.wait(self.api, op["id"], timeout=timeout, interval=0.3,
                           on_progress=on_progress, ctxt=context())

    def start_engine(self) -> None:
        self.engine.start()

    def kill_engine(self) -> None:
        self.engine.kill()

    def stop(self) -> None:
        """API, engine, client transport, forwards, broker; idempotent."""
        try:
            try:
                if self.api_service is not None:
                    self.api_service.stop()
                if self._api_forward is not None:
                    self._api_forward.close()
                    self._api_forward = None
            finally:
                self.engine.stop()
        finally:
            listener, self._listener = self._listener, None
            if listener is not None:
                bounded(listener.stop)
                bounded(listener.wait)
                bounded(self._ntransport.cleanup)
            transport, self._transport, self._api = self._transport, None, None
            self._agents = None
            if transport is not None:
                bounded(transport.cleanup)
            if self.forward is not None:
                self.forward.close()
                self.forward = None
            self.broker.stop()


def bounded(fn: Any, timeout: float = 30.0) -> None:
    """``fn()`` in a thread, waited for at most ``timeout`` seconds (with the broker
    gone, oslo.messaging's drivers retry for ever)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout)
