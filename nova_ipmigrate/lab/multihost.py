"""A split-memory instance across lab hosts: main host plus sub-hosts, oracle inside.

Owns the multi-host run behind ``ipmigrate-demo --hosts N`` and the remote
paging integration test: bring the lab up (hosts as namespaces), start an
``ipmigrate-agent`` in every host, prepare the guest's RAM file on the main
host (h1) with its resident limit and the other hosts as its sub-hosts, boot
the oracle guest inside h1, and sample it like the single-host run. Everything
is torn down again, also on failure (the lab's ``down`` also after a crash).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova_ipmigrate.fabric import auth
from nova_ipmigrate.guest.image import ensure_guest_image
from nova_ipmigrate.guest.serial import OracleMonitor
from nova_ipmigrate.hooks.libvirt_qemu import hook_script
from nova_ipmigrate.lab import memview
from nova_ipmigrate.lab.control import ControlPlane, context
from nova_ipmigrate.lab.hosts import Lab
from nova_ipmigrate.lab.libvirt import LabLibvirtd, LibvirtGuest, domain_xml, start_all, stop_all
from nova_ipmigrate.lab.memfsd import AgentDaemon
from nova_ipmigrate.lab.singlehost import (
    MIB,
    RAM_PATH,
    RunResult,
    Sample,
    SingleHostParams,
    _monitor,
)
from nova_ipmigrate.qemu.memcg import MemoryCgroup
from nova_ipmigrate.qemu.runner import QemuConfig, QemuProcess
from nova_ipmigrate.qemu.shim import ensure_nohuge_shim

FABRIC_PORT = 47800
LOG = logging.getLogger(__name__)


class ScenarioError(Exception):
    """The scenario failed; the guest's run result comes with it."""

    def __init__(self, result: RunResult, extra: dict[str, Any], cause: BaseException) -> None:
        super().__init__(f"scenario failed: {cause!r}; guest: {result.verdict}")
        self.result = result
        self.extra = extra
        self.cause = cause


@dataclass
class SplitParams(SingleHostParams):
    hosts: int = 3
    #: tc rate of every host's link (e.g. "1gbit"); None: unshaped
    link: str | None = None
    lab_prefix: str = "ipm"
    placement_policy: str = "round_robin"
    substore_mb: int = 1024
    #: sub-host store size of some hosts (lab name -> MiB), the others: ``substore_mb``
    substore_mb_by_host: dict[str, int] | None = None
    #: split migration: boot as a normal single-host VM (no limit, no sub-hosts) and
    #: split it this many seconds after the oracle filled its memory; None: boot split
    split_after_s: float | None = None
    #: kill the last sub-host's agent (SIGKILL) this many seconds after the fill
    kill_sub_host_after_s: float | None = None
    fetch_timeout: float = 30.0
    #: sub-hosts the VM starts with (h2..); the other hosts are spares (None: all)
    sub_hosts: int | None = None
    #: operations to run while the guest runs (``lab.scenario``): started in a
    #: thread this many seconds after the oracle filled its memory
    scenario: Callable[[LabContext], dict[str, Any]] | None = None
    scenario_after_s: float = 5.0
    #: run the control plane (RabbitMQ and ipmigrate-engine on h1) and drive the
    #: split and every operation through the engine (``lab.control``)
    control_plane: bool = False
    #: with the control plane: also run ``ipmigrate-api`` (noauth2) on h1, for the
    #: ``openstack`` CLI (``ControlPlane.api_service``)
    api: bool = False
    #: run the guest as a libvirt domain (every host runs its own libvirtd with the
    #: hook, ``lab.libvirt``) instead of a QEMU started directly in h1
    libvirt: bool = True
    #: what the domain does when the guest reboots: "destroy" (the run ends; a guest
    #: panic reboots it) or "restart" (a reboot test)
    libvirt_on_reboot: str = "destroy"


@dataclass
class LabContext:
    """What a scenario sees of a running split VM in the lab."""

    agents: dict[str, AgentDaemon]   # by lab host name (h1, h2, ...)
    main: AgentDaemon
    vm: str
    path: str
    workdir: Path
    #: False once the guest stopped (a scenario should not start new operations then)
    running: Callable[[], bool]
    #: the lab's control plane, when the run has one (operations go through its engine)
    control: ControlPlane | None = None
    #: the guest (its QEMU process, or its libvirt domain)
    guest: Any = None
    #: every host's libvirtd (lab name -> LabLibvirtd), when the guest is a domain
    libvirtds: dict[str, LabLibvirtd] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """memfs statistics of the VM's current main host."""
        return self.main.stats()


def run_split(p: SplitParams, on_sample: Callable[[Sample], None] | None = None,
              ) -> tuple[RunResult, dict[str, Any]]:
    """Boot the oracle guest as a split-memory instance; returns the run and per-host stats."""
    if p.hosts < 2:
        raise ValueError("a split-memory instance needs a main host and at least one sub-host")
    p.workdir.mkdir(parents=True, exist_ok=True)
    image = ensure_guest_image(p.cache_dir, p.kernel_package)
    shim = ensure_nohuge_shim(p.cache_dir) if p.block_thp_readahead else None
    key = p.workdir / "fabric.key"
    if not key.exists():
        auth.generate_key_file(key)
    lab = Lab(p.workdir / "lab", prefix=p.lab_prefix)
    with contextlib.ExitStack() as stack:
        stack.callback(lab.down)
        hosts = lab.up(p.hosts, p.link)
        control: ControlPlane | None = None
        if p.control_plane:
            control = ControlPlane(p.workdir / "control", hosts[0],
                                   [h.hostname for h in hosts], api=p.api)
            control.start()
            stack.callback(control.stop)
            LOG.info("control plane on %s: RabbitMQ %s, engine %s", hosts[0].name,
                     control.transport_url.rsplit("@", 1)[-1], control.engine.host)
        agents: list[AgentDaemon] = []
        for h in hosts:
            d = AgentDaemon(h.state_dir, h.hostname, key, FABRIC_PORT, h.address,
                            memfs={"max_readahead_kb": p.max_readahead_kb,
                                   "page_store_mb": p.page_store_mb,
                                   "pin_resident_pages": p.pin_resident_pages,
                                   "reader_threads": 3, "victim_policy": p.victim_policy},
                            agent={"placement_policy": p.placement_policy,
                                   "substore_mb": (p.substore_mb_by_host or {}).get(
                                       h.name, p.substore_mb),
                                   "fetch_timeout": p.fetch_timeout},
                            prefix=h.enter_command([], cwd=h.state_dir),
                            defaults=control.agent_defaults() if control else None)
            if control is not None:
                d.extra_sections.update(control.rabbit_sections())
            d.start()
            stack.callback(d.stop)
            agents.append(d)
        main = agents[0]
        nsubs = p.hosts - 1 if p.sub_hosts is None else p.sub_hosts
        if not 1 <= nsubs <= p.hosts - 1:
            raise ValueError(f"sub_hosts must be 1..{p.hosts - 1}")
        subs = agents[1:1 + nsubs]
        vm = uuid.uuid4()

        if control is not None:
            control.wait_agents()

        def split() -> dict[str, Any]:
            if control is None:
                return main.call("split", path=RAM_PATH, vm=str(vm),
                                 resident_limit=p.limit_bytes,
                                 sub_hosts=[s.sub_host_entry() for s in subs])
            op = control.run(control.api.split(
                context(), main_host=main.host, path=RAM_PATH, vm=str(vm),
                sub_hosts=[s.host for s in subs], resident_limit=p.limit_bytes), timeout=120)
            if op["state"] != "done":
                raise RuntimeError(f"the engine's split ended {op['state']}: {op['fault']}")
            return op

        actions = []
        if p.kill_sub_host_after_s is not None:
            def kill() -> dict[str, Any]:
                os.kill(subs[-1].pid, signal.SIGKILL)
                return {"killed": subs[-1].host}
            actions.append((p.kill_sub_host_after_s, "kill_sub_host", kill))
        if p.split_after_s is None:
            main.call("create", path=RAM_PATH, size=p.ram_mb * MIB,
                      resident_limit=p.limit_bytes)
            split()
        else:
            main.call("create", path=RAM_PATH, size=p.ram_mb * MIB, resident_limit=0)
            actions.append((p.split_after_s, "split_migration", split))
        memcg = MemoryCgroup(f"ipmigrate-split-{vm.hex[:8]}")
        stack.callback(memcg.destroy)
        serial = p.workdir / "serial.log"
        serial.unlink(missing_ok=True)
        qemu: QemuProcess | LibvirtGuest
        libvirtds: dict[str, LabLibvirtd] = {}
        if p.libvirt:
            for h, a in zip(hosts, agents, strict=True):
                libvirtds[h.name] = LabLibvirtd(
                    h, a.mountpoint, hook=hook_script(sys.executable, a.socket))
            start_all(list(libvirtds.values()))
            stack.callback(stop_all, list(libvirtds.values()))
            # the extra QMP monitor is in every host's private /run: the same path
            # serves the domain wherever it runs
            qmp_inside = Path("/run/ipmigrate") / f"{vm}.qmp"
            emulator = shutil.which(p.qemu_binary) or p.qemu_binary
            qemu = LibvirtGuest(libvirtds[hosts[0].name], domain_xml(
                "oracle", p.ram_mb, image.kernel, image.initrd, p.cmdline(), serial,
                qmp_inside, emulator=emulator, accel=p.accel,
                preload=str(shim) if p.block_thp_readahead and shim else None,
                domain_uuid=str(vm), on_reboot=p.libvirt_on_reboot),
                "oracle", main.mountpoint / RAM_PATH,
                hosts[0].run_dir / "ipmigrate" / f"{vm}.qmp", memcg=memcg,
                qmp_inside=qmp_inside)
        else:
            qemu = QemuProcess(QemuConfig(
                ram_mb=p.ram_mb, ram_path=main.mountpoint / RAM_PATH, kernel=image.kernel,
                initrd=image.initrd,
                append=p.cmdline(),
                serial_log=serial, qmp_socket=p.workdir / "qmp.sock", accel=p.accel,
                block_thp_readahead=p.block_thp_readahead, shim_path=shim, memcg=memcg,
                qemu_binary=p.qemu_binary, wrapper=hosts[0].enter_command([])))
        qemu.start()
        stack.callback(qemu.stop)
        guest_info: dict[str, Any] = {}
        if isinstance(qemu, LibvirtGuest):
            guest_info = {"libvirt_domain": qemu.name, "qemu_pid": qemu.pid,
                          "qemu_cmdline": qemu.cmdline(),
                          "host_uuid": qemu.libvirtd.reported_host_uuid()}
        scenario: dict[str, Any] = {}
        thread: threading.Thread | None = None
        ctx = LabContext({h.name: a for h, a in zip(hosts, agents, strict=True)}, main,
                         str(vm), RAM_PATH, p.workdir, qemu.alive, control, qemu, libvirtds)
        if p.scenario is not None:
            body = p.scenario

            def run_scenario() -> None:
                try:
                    scenario["result"] = body(ctx)
                except BaseException as exc:  # reported after the run, with the guest's
                    scenario["error"] = exc
                    LOG.exception("scenario failed")

            def start_scenario() -> dict[str, Any]:
                nonlocal thread
                thread = threading.Thread(target=run_scenario, name="lab-scenario",
                                          daemon=True)
                thread.start()
                return {"started": True}
            actions.append((p.scenario_after_s, "scenario", start_scenario))
        result = _monitor(p, ctx, qemu, memcg, OracleMonitor(serial), on_sample, actions)
        if thread is not None:
            thread.join(300)
            if thread.is_alive():
                scenario["error"] = TimeoutError("the scenario outlived the guest by 300 s")
        extra_ops: list[dict[str, Any]] = []
        if control is not None:
            try:
                extra_ops = control.api.list_operations(context())
            except Exception:  # noqa: BLE001 - the report goes on without them
                LOG.exception("the engine's operations of %s", vm)
        per_host = {d.host: d.call("agent_stats") for d in agents if d.alive()}
        per_host_pages = {
            h: s["substore"]["vms"].get(str(vm), 0) for h, s in per_host.items()}
        here = result.memfs["files"].get(ctx.path) or {}
        per_host_pages[ctx.main.host] = here.get("resident", 0)
        view = memview.render(ctx.main.call("page_map", path=ctx.path), p.workdir)
        extra: dict[str, Any] = {"vm": str(vm), "pages_by_host": per_host_pages,
                 "fabric": {h: s["fabric"] for h, s in per_host.items()},
                 "memory_view": view,
                 "memory_map": [str(p.workdir / "memory-map.svg"),
                                str(p.workdir / "memory-map.png")]}
        if guest_info:
            guest_info["hosts"] = list(getattr(qemu, "hosts", []))
            extra["guest"] = guest_info
        if control is not None:
            extra["engine_operations"] = extra_ops
            extra["notifications"] = [[t, d] for t, d in control.notifications.events]
        if "error" in scenario:
            raise ScenarioError(result, extra, scenario["error"])
        if "result" in scenario:
            extra["scenario"] = scenario["result"]
        return result, extra
    raise AssertionError("unreachable")
