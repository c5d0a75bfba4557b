"""Operations on a running split VM in the lab, and the scenarios built from them.

:class:`LabOps` drives part moves through the agents' control sockets (the
engine of the control-plane issue takes this role later): partial migration,
reintegration, abort, host drain (planned by ``migration.drain``), with a
progress bar for every operation. The scenarios are what the integration
tests, the benchmarks and ``ipmigrate-lab scenario`` run while the oracle
guest writes and verifies its memory.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from nova_ipmigrate.engine.models import ACTIVE_STATES
from nova_ipmigrate.lab.cli import ADMIN, CLIResult, OpenStackCLI
from nova_ipmigrate.lab.control import context
from nova_ipmigrate.lab.memfsd import AgentDaemon
from nova_ipmigrate.lab.multihost import LabContext
from nova_ipmigrate.lab.progress import ProgressPrinter
from nova_ipmigrate.migration.drain import Part, plan_drain

LOG = logging.getLogger(__name__)
PAGE = 4096


class ScenarioFailed(AssertionError):
    """A step of a scenario did not end as it must."""


class LabOps:
    def __init__(self, ctx: LabContext, progress: ProgressPrinter | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.control = ctx.control
        self.progress = progress or ProgressPrinter()
        self.log = log or (lambda line: print(line, flush=True))

    @property
    def engine(self) -> Any:
        """The engine's RPC client (only with the control plane)."""
        if self.control is None:
            raise ScenarioFailed("this run has no control plane (no engine)")
        return self.control.api

    # -- hosts ----------------------------------------------------------------------

    def agent(self, host: str) -> AgentDaemon:
        """A host's agent by lab name (h2) or host name."""
        for name, a in self.ctx.agents.items():
            if host in (name, a.host):
                return a
        raise KeyError(f"no lab host {host!r}")

    def name(self, host: str) -> str:
        return self.agent(host).host

    def alive(self) -> list[AgentDaemon]:
        return [a for a in self.ctx.agents.values() if a.alive()]

    def held(self, host: str) -> int:
        """Pages of the VM a host holds as a sub-host (its fabric store)."""
        stats = self.agent(host).call("agent_stats")
        return int(stats["substore"]["vms"].get(self.ctx.vm, 0))

    def staged(self, host: str) -> int:
        """Pages a host stores under keys other than the VM's: staged copies of moves."""
        vms = self.agent(host).call("agent_stats")["substore"]["vms"]
        return sum(int(n) for k, n in vms.items() if k != self.ctx.vm)

    def layout(self) -> dict[str, int]:
        """Pages of the VM on each host, as the main host's directory says (through
        the engine when there is one)."""
        if self.control is not None:
            pages = self.engine.show_vm(context(), self.ctx.vm)["pages_by_host"]
            return {str(h): int(n) for h, n in pages.items()}
        vms = self.ctx.main.call("parts")["vms"]
        for v in vms:
            if v["vm"] == self.ctx.vm:
                return {str(h): int(n) for h, n in v["pages_by_host"].items()}
        raise ScenarioFailed(f"the main host reports no split VM {self.ctx.vm}")

    def snapshot(self, stem: str) -> str:
        """Draw where the VM's memory is now (``<stem>.svg``/``.png`` in the work dir)."""
        from nova_ipmigrate.lab import memview
        text = memview.render(self.ctx.main.call("page_map", path=self.ctx.path),
                              self.ctx.workdir, stem)
        self.log(f"memory layout ({stem}):\n{text}")
        return text

    # -- operations -------------------------------------------------------------------

    def start_partial(self, source: str, dest: str | None, strategy: str = "ipmigrate",
                      max_rate_mb_s: float | None = None) -> dict[str, Any]:
        """Start moving ``source``'s part to ``dest`` (None: the engine chooses)."""
        if self.control is not None:
            return self.engine.partial_migration(
                context(), self.ctx.vm, self.name(source),
                dest_host=None if dest is None else self.name(dest), strategy=strategy,
                max_rate_mb_s=max_rate_mb_s)
        if dest is None:
            raise ScenarioFailed("without the engine a destination must be given")
        args: dict[str, Any] = {"path": self.ctx.path, "source": self.name(source),
                                "dest": self.agent(dest).sub_host_entry(),
                                "strategy": strategy}
        if max_rate_mb_s:
            args["max_rate_mb_s"] = max_rate_mb_s
        return self.ctx.main.call("partial_migrate", **args)

    def partial(self, source: str, dest: str | None,
                strategy: str = "ipmigrate") -> dict[str, Any]:
        return self.wait(self.start_partial(source, dest, strategy))

    def start_reintegrate(self, strategy: str = "ipmigrate") -> dict[str, Any]:
        if self.control is not None:
            return self.engine.reintegration(context(), self.ctx.vm, strategy=strategy)
        return self.ctx.main.call("reintegrate", path=self.ctx.path, strategy=strategy)

    def reintegrate(self, strategy: str = "ipmigrate") -> dict[str, Any]:
        return self.wait(self.start_reintegrate(strategy))

    def status(self, op: dict[str, Any]) -> dict[str, Any]:
        if self.control is not None:
            return self.engine.show_operation(context(), op["id"])
        return self.ctx.main.call("op_status", id=op["id"])

    def copied(self, op: dict[str, Any]) -> int:
        """Pages the operation copied so far (0 while it is queued)."""
        return int((self.status(op).get("progress") or {}).get("copied", 0))

    def abort(self, op: dict[str, Any]) -> dict[str, Any]:
        if self.control is not None:
            return self.engine.abort_operation(context(), op["id"])
        return self.ctx.main.call("op_abort", id=op["id"])

    def wait(self, op: dict[str, Any], timeout: float = 600.0,
             main: AgentDaemon | None = None) -> dict[str, Any]:
        """Wait for an operation to end, showing its progress."""
        if self.control is not None:
            try:
                return self.control.run(op, timeout, on_progress=self._show)
            except TimeoutError as exc:
                self.abort(op)
                raise ScenarioFailed(f"operation {op['id']} did not end in "
                                     f"{timeout:.0f}s") from exc
        return self._wait_agent(op, timeout, main or self.ctx.main)

    def _wait_agent(self, op: dict[str, Any], timeout: float,
                    agent: AgentDaemon) -> dict[str, Any]:
        """Wait for an agent's operation to end (its control socket), showing its
        progress."""
        deadline = time.monotonic() + timeout
        cur = op
        while True:
            cur = agent.call("op_status", id=op["id"], wait=0.5)
            self.progress.update(cur)
            if cur["state"] != "running":
                return cur
            if time.monotonic() > deadline:
                agent.call("op_abort", id=op["id"])
                raise ScenarioFailed(f"operation {op['id']} did not end in {timeout:.0f}s")

    def _show(self, op: dict[str, Any]) -> None:
        """An engine operation on the progress bar (from when it starts; aborting
        counts as running)."""
        if op["kind"] == "host_drain" or op["state"] == "queued":
            return
        self.progress.update({
            "kind": op["kind"], "source": op.get("source_host"),
            "dest": op.get("dest_host"), "progress": op.get("progress") or {},
            "fault": op.get("fault"),
            "state": "running" if op["state"] in ACTIVE_STATES else op["state"]})

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"timed out waiting for {what}")
            time.sleep(0.05)

    def main_move(self, dest: str, then: str = "pull", timeout: float = 600.0,
                  inject: Callable[[], None] | None = None) -> dict[str, Any]:
        """Move the VM's main host (vCPUs, devices, resident pages) to ``dest``.

        ``then``: after the switch, ``pull`` the old main host's pages to ``dest``,
        or ``reintegrate`` every part onto it. Returns ``{"migration": the libvirt
        step's operation, "moved", "pull": the pull (or reintegration) operation,
        "downtime_ms" (QMP STOP at the source to RESUME at the destination),
        "directory_ms", "total_s"}``; on failure ``moved`` is False and the VM
        still runs on its main host.
        """
        ctx = self.ctx
        src, dst = ctx.main, self.agent(dest)
        libvirtd = ctx.libvirtds.get(self._lab_name(dest))
        if libvirtd is None or not hasattr(ctx.guest, "expect_move"):
            raise ScenarioFailed("a main-host move needs the guest to be a libvirt domain "
                                 "(SplitParams.libvirt)")
        t0 = time.monotonic()
        if self.control is not None:
            return self._main_move_engine(src, dst, libvirtd, then, timeout, inject, t0)
        f = src.stats()["files"][ctx.path]
        dst.call("incoming_prepare", vm=ctx.vm, size=int(f["size"]),
                 resident_limit=int(f["resident_limit_pages"]) * PAGE,
                 source=src.sub_host_entry())
        op = self._run_move(libvirtd, inject, lambda: self.wait(
            src.call("main_migrate", path=ctx.path, dest=dst.sub_host_entry()), timeout,
            main=src))
        out: dict[str, Any] = {"migration": op, "moved": op["state"] == "done"}
        if op["state"] != "done":
            # the VM goes on here; the caller cleans the destination up (abort_incoming)
            ctx.guest.expect_move(None)
            return out
        res = dst.call("incoming_commit", vm=ctx.vm, then=then)
        self._switched(dst, str(res["path"]))
        stopped = (op.get("details") or {}).get("stopped_at")
        if stopped and res.get("resumed_at"):
            out["downtime_ms"] = round((res["resumed_at"] - stopped) * 1e3, 2)
        out["directory_ms"] = res.get("directory_ms")
        out["switched_s"] = round(time.monotonic() - t0, 3)
        if "op" in res:
            out["pull"] = self.wait(res["op"], timeout, main=dst)
        out["total_s"] = round(time.monotonic() - t0, 3)
        self.log(f"main host {src.host} -> {dst.host}: downtime "
                 f"{out.get('downtime_ms')} ms (directory {out['directory_ms']} ms), "
                 f"switched in {out['switched_s']} s, all in {out['total_s']} s")
        return out

    def _switched(self, dst: AgentDaemon, path: str) -> None:
        """The VM's main host is ``dst`` now, its RAM file ``path`` there."""
        self.ctx.main, self.ctx.path = dst, path
        self.ctx.guest.ram_path = dst.mountpoint / path

    def _run_move(self, libvirtd: Any, inject: Callable[[], None] | None,
                  run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a main-host move's first part (``run``: start it, wait for it) with the
        guest followed to ``libvirtd`` and ``inject`` (a failure) in a thread meanwhile."""
        self.ctx.guest.expect_move(libvirtd)
        injector = None
        try:
            if inject is not None:   # it waits for the move itself before it acts
                injector = threading.Thread(target=inject, name="lab-inject", daemon=True)
                injector.start()
            op = run()
            if injector is not None:
                injector.join(60)
        except BaseException:
            self.ctx.guest.expect_move(None)
            raise
        return op

    def _main_move_engine(self, src: AgentDaemon, dst: AgentDaemon, libvirtd: Any,
                          then: str, timeout: float, inject: Callable[[], None] | None,
                          t0: float) -> dict[str, Any]:
        ctx = self.ctx
        op = self._run_move(libvirtd, inject, lambda: self.wait(
            self.engine.main_host_migration(context(), ctx.vm, dest_host=dst.host,
                                            then=then), timeout))
        moved = op.get("main_host") == dst.host
        out: dict[str, Any] = {"migration": op, "moved": moved}
        if not moved:
            ctx.guest.expect_move(None)
            return out
        entry = next(v for v in dst.call("parts")["vms"] if v["vm"] == ctx.vm)
        self._switched(dst, str(entry["path"]))
        pr = op.get("progress") or {}
        out.update(downtime_ms=pr.get("downtime_ms"), directory_ms=pr.get("directory_ms"),
                   pull=op, total_s=round(time.monotonic() - t0, 3))
        self.log(f"main host {src.host} -> {dst.host} (engine operation {op['id']}): "
                 f"downtime {out['downtime_ms']} ms (directory {out['directory_ms']} ms), "
                 f"all in {out['total_s']} s")
        return out

    def driver_main_move(self, dest: str, timeout: float = 600.0) -> dict[str, Any]:
        """A main-host move the way Nova's driver runs one
        (:mod:`nova_ipmigrate.virt.mainmove`): the agents are called around a libvirt
        migration that someone else runs (here the lab, in Nova's place: ``virsh
        migrate --live --p2p`` on the old main host's libvirtd, as Nova's driver calls
        migrateToURI3 there). Direct agent calls, with or without the control plane:
        they stand for the driver's hooks. Returns the pull and the libvirt step's
        seconds; the VM runs on ``dest`` afterwards."""
        ctx = self.ctx
        src, dst = ctx.main, self.agent(dest)
        libvirtd = ctx.libvirtds.get(self._lab_name(dest))
        source_lvd = ctx.libvirtds.get(ctx.guest.libvirtd.host.name) \
            if hasattr(ctx.guest, "libvirtd") else None
        if libvirtd is None or source_lvd is None:
            raise ScenarioFailed("a main-host move needs the guest to be a libvirt domain")
        t0 = time.monotonic()
        f = src.stats()["files"][ctx.path]
        # pre_live_migration at D
        dst.call("incoming_prepare", vm=ctx.vm, size=int(f["size"]),
                 resident_limit=int(f["resident_limit_pages"]) * PAGE,
                 source=src.sub_host_entry())
        # live_migration at M: the agent's side, then the hypervisor's migration
        src.call("main_prepare_source", vm=ctx.vm, dest=dst.sub_host_entry())
        address = dst.sub_host_entry()["address"]
        ctx.guest.expect_move(libvirtd)
        out = source_lvd.virsh("migrate", "--live", "--p2p", ctx.guest.name,
                               f"qemu+tcp://{address}/system", f"tcp://{address}",
                               check=False, timeout=timeout)
        libvirt_s = round(time.monotonic() - t0, 3)
        ok = out.returncode == 0
        src.call("main_finish_source", vm=ctx.vm, ok=ok)
        if not ok:
            ctx.guest.expect_move(None)
            dst.call("incoming_abort", vm=ctx.vm)
            raise ScenarioFailed(f"libvirt migration failed: {out.stderr.strip()}")
        # post_live_migration_at_destination at D: pull M's resident pages
        res = dst.call("incoming_commit", vm=ctx.vm, then="pull")
        self._switched(dst, str(res["path"]))
        pull = self._wait_agent(res["op"], timeout, dst) if "op" in res else None
        result = {"libvirt_s": libvirt_s, "pull": pull,
                  "directory_ms": res.get("directory_ms"),
                  "total_s": round(time.monotonic() - t0, 3)}
        self.log(f"main host {src.host} -> {dst.host} as Nova's driver runs it: libvirt "
                 f"{libvirt_s} s, directory {result['directory_ms']} ms, all in "
                 f"{result['total_s']} s")
        return result

    def source_op_ended(self, host: str) -> bool:
        """The main-host move the VM's main host ``host`` runs has ended."""
        ops = self.agent(host).call("ops")["ops"]
        mine = [o for o in ops if o["kind"] == "main_host_migration" and o["vm"] == self.ctx.vm]
        return bool(mine) and mine[-1]["state"] != "running"

    def incoming_started(self, dest: str) -> bool:
        """The destination of a main-host move created the incoming RAM file (its
        libvirt started the incoming QEMU)."""
        try:
            inc = self.agent(dest).call("main_moves", timeout=2)["incoming"]
        except Exception:  # noqa: BLE001 - not up (yet)
            return False
        return bool((inc.get(self.ctx.vm) or {}).get("path"))

    def reboot_guest(self) -> dict[str, Any]:
        """Reset the guest through its extra QMP monitor where it runs now."""
        from nova_ipmigrate.qemu.qmp import QMPClient
        guest = self.ctx.guest
        with QMPClient(guest.qmp_socket_on(guest.libvirtd)).connect(timeout=10) as qmp:
            qmp.execute("system_reset")
        self.log(f"guest reset on {guest.libvirtd.host.name}")
        return {"host": guest.libvirtd.host.name, "t": time.time()}

    def abort_incoming(self, dest: str, timeout: float = 60.0) -> None:
        """After a failed main-host move: the destination forgets the VM (once its
        incoming QEMU is gone)."""
        dst = self.agent(dest)

        def gone() -> bool:
            try:
                dst.call("incoming_abort", vm=self.ctx.vm)
            except Exception as exc:  # noqa: BLE001 - EBUSY while the incoming QEMU goes
                LOG.info("incoming_abort on %s: %s", dst.host, exc)
                return False
            return True
        self.wait_for(gone, timeout, f"the incoming domain on {dst.host} to go")

    def _lab_name(self, host: str) -> str:
        for name, a in self.ctx.agents.items():
            if host in (name, a.host):
                return name
        raise KeyError(f"no lab host {host!r}")

    def drain(self, host: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """Move every part the host holds elsewhere: ``{"plan": summary, "complete",
        "moves", "ops": [each part move's final dict], "op": the engine's drain}``."""
        if self.control is not None:
            op = self.engine.host_drain(context(), self.name(host),
                                        exclude=[self.name(h) for h in exclude])
            op = self.wait(op)
            children = self.engine.show_operation(context(), op["id"])["children"]
            for c in children:
                self._show(c)
            pr = op.get("progress") or {}
            self.log(str(pr.get("plan", "")))
            return {"plan": pr.get("plan", ""), "moves": len(pr.get("moves", [])),
                    "complete": op["state"] == "done" and not pr.get("unplaced"),
                    "ops": children, "op": op}
        drained = self.name(host)
        parts: list[Part] = []
        free: dict[str, int] = {}
        mains: dict[str, AgentDaemon] = {}
        for a in self.alive():
            for entry in a.call("parts")["vms"]:
                parts.append(Part.from_report(entry))
            mains[a.host] = a
            sub = a.call("agent_stats")["substore"]
            free[a.host] = int(sub["capacity_pages"]) - int(sub["used_pages"])
        plan = plan_drain(drained, parts, free, exclude={self.name(h) for h in exclude})
        self.log(plan.summary())
        started = []
        for m in plan.moves:
            main = mains[m.main_host]
            op = main.call("partial_migrate", path=m.path, source=m.source,
                           dest=self.agent(m.dest).sub_host_entry())
            started.append((main, op))
        results = [self.wait(op, main=main) for main, op in started]
        return {"plan": plan.summary(), "moves": len(plan.moves), "complete": plan.complete,
                "ops": results, "op": None}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ScenarioFailed(message)


def _done(op: dict[str, Any]) -> dict[str, Any]:
    _check(op["state"] == "done", f"operation {op['id']} ended {op['state']}: {op.get('fault')}")
    return op


# -- scenarios ------------------------------------------------------------------------


def _reintegrate_all(ctx: LabContext, ops: LabOps, out: dict[str, Any]) -> dict[str, Any]:
    """Reintegrate the VM onto its main host; ``out`` with the result and the layout."""
    op = _done(ops.reintegrate())
    layout = ops.layout()
    _check(set(layout) == {ctx.main.host}, f"pages left on sub-hosts: {layout}")
    out["reintegration"] = op
    out["layout_after"] = layout
    return out


def sub_host_moves(ctx: LabContext, ops: LabOps | None = None) -> dict[str, Any]:
    """h2's part to h4 (a new host); an aborted move and one whose destination dies.

    Needs 4 hosts: the VM on h1 with h2 and h3 as sub-hosts, h4 spare.
    """
    ops = ops or LabOps(ctx)
    out: dict[str, Any] = {"layout_before": ops.layout()}
    part = ops.held("h2")
    _check(part > 1000, f"h2 holds only {part} pages of the VM")
    op = _done(ops.partial("h2", "h4"))
    _check(ops.held("h2") == 0, "h2 still holds pages of the VM after its part moved")
    _check(ops.layout().get(ops.name("h4"), 0) > 0, "h4 owns nothing after the move")
    out["partial_migration"] = op
    # An operator abort mid-transfer (the cap keeps the copy slow enough to catch it).
    op = ops.start_partial("h3", "h2", max_rate_mb_s=20)
    ops.wait_for(lambda: ops.copied(op) > 0, 60, "the copy to start")
    ops.abort(op)
    op = ops.wait(op)
    _check(op["state"] == "aborted", f"abort ended {op['state']}")
    _check(ops.layout().get(ops.name("h2"), 0) == 0, "the aborted destination owns pages")
    ops.wait_for(lambda: ops.staged("h2") == 0, 60, "staged copies to be dropped at h2")
    out["abort"] = op
    # The destination's agent dies mid-transfer: the source keeps its part.
    op = ops.start_partial("h3", "h2", max_rate_mb_s=20)
    ops.wait_for(lambda: ops.copied(op) > 0, 60, "the copy to start")
    victim = ops.agent("h2")
    os.kill(victim.pid, signal.SIGKILL)
    op = ops.wait(op)
    _check(op["state"] == "failed", f"a move to a dead host ended {op['state']}")
    _check(ops.layout().get(ops.name("h2"), 0) == 0, "the dead destination owns pages")
    _check(ops.held("h3") > 0, "h3 lost its part")
    out["killed_destination"] = op
    out["layout_after"] = ops.layout()
    return out


def drain_and_reintegrate(ctx: LabContext, ops: LabOps | None = None) -> dict[str, Any]:
    """Drain h3, then reintegrate the VM onto h1 (every part sends in parallel).

    h2 is excluded from the drain when it is alive (as an operator excludes a
    host due for maintenance next): h3's part goes to the spare h4, so the VM
    is still split 3-way when it is reintegrated.
    """
    ops = ops or LabOps(ctx)
    out: dict[str, Any] = {"layout_before": ops.layout()}
    exclude = ("h2",) if ops.agent("h2").alive() else ()
    drain = ops.drain("h3", exclude=exclude)
    _check(drain["moves"] > 0 and drain["complete"], str(drain["plan"]))
    for r in drain["ops"]:
        _done(r)
    _check(ops.held("h3") == 0, "h3 still holds pages after the drain")
    out["drain"] = {**drain, "layout": ops.layout()}
    return _reintegrate_all(ctx, ops, out)


def _kill_when(ops: LabOps, dest: str, kill: Callable[[], None],
               repair: Callable[[], None]) -> Callable[[], None]:
    """An injector: ``kill`` once ``dest`` has started the incoming QEMU, then
    ``repair`` once the old main host's libvirt step has ended."""
    main = ops.ctx.main.host

    def inject() -> None:
        ops.wait_for(lambda: ops.incoming_started(dest), 60, f"the incoming domain on {dest}")
        kill()
        ops.wait_for(lambda: ops.source_op_ended(main), 300, "the libvirt step to end")
        repair()
    return inject


def _failed_move(ctx: LabContext, ops: LabOps, dest: str, kill: Callable[[], None],
                 repair: Callable[[], None], what: str) -> dict[str, Any]:
    """A main-host move to ``dest`` during which ``kill`` runs: it must fail and
    leave the VM running on its main host with every part where it was."""
    main = ctx.main.host
    res = ops.main_move(dest, inject=_kill_when(ops, dest, kill, repair))
    if ops.control is None:
        ops.abort_incoming(dest)   # the engine does it itself
    _check(not res["moved"], f"the main-host move survived {what}: {res['migration']}")
    _check(ctx.main.host == main and ctx.running(), f"the VM does not run on {main}")
    layout = ops.layout()
    _check(layout.get(ops.name(dest), 0) == 0, f"{dest} owns pages after {what}: {layout}")
    _check(set(layout) <= {main, ops.name("h2"), ops.name("h3")}, f"layout {layout}")
    ops.log(f"main-host move with {what}: {res['migration']['state']} "
            f"({res['migration']['fault']}); the VM goes on at {main}")
    return {"op": res["migration"], "layout": layout}


def main_host_moves(ctx: LabContext, ops: LabOps | None = None) -> dict[str, Any]:
    """Main-host moves of the VM (a libvirt domain on h1, parts on h2 and h3, h4 spare).

    1. h4's agent is killed mid-migration, then h4's libvirtd: each time the VM
       goes on at h1 with nothing moved; h4 is brought back.
    2. Main-host partial migration h1 -> h4: the vCPUs move, h1's resident pages
       follow, h1 is empty afterwards.
    3. Reintegration onto h1, a host other than the main host (h4): the main
       host moves there first, then every part comes to it in parallel.
    4. The same move as Nova's driver runs it (:meth:`LabOps.driver_main_move`): the
       agents' ``main_prepare_source``/``main_finish_source`` around a libvirt
       migration run by someone else, h1 -> h4.
    5. The guest reboots (QMP system_reset; needs ``libvirt_on_reboot="restart"``).
    """
    ops = ops or LabOps(ctx)
    out: dict[str, Any] = {"layout_before": ops.layout()}
    h4 = ops.agent("h4")
    lvd = ctx.libvirtds["h4"]

    def restart_agent() -> None:
        lvd.kill_domains()   # an incoming QEMU left on the dead mount
        lvd.wait_no_domains()
        h4.start()
    out["killed_agent"] = _failed_move(
        ctx, ops, "h4", lambda: os.kill(h4.pid, signal.SIGKILL), restart_agent,
        "the destination's agent killed")
    def kill_orphans() -> None:
        lvd.kill_domains()   # the incoming QEMU the killed libvirtd left
    out["killed_libvirtd"] = _failed_move(
        ctx, ops, "h4", lvd.kill, kill_orphans, "the destination's libvirtd killed")
    lvd.start()
    lvd.wait_no_domains()   # it removes the dead incoming domain it finds first
    res = ops.main_move("h4")
    _check(res["moved"], f"main-host move to h4: {res['migration']}")
    _done(res["pull"])
    _check(ctx.main.host == ops.name("h4"), "h4 is not the main host")
    ops.wait_for(lambda: not ops.agent("h1").stats()["files"], 30, "h1 to release the RAM")
    out["main_host_migration"] = {**res, "layout": ops.layout()}
    _check(ops.name("h1") not in out["main_host_migration"]["layout"],
           f"h1 still holds pages: {out['main_host_migration']['layout']}")
    res = ops.main_move("h1", then="reintegrate")
    _check(res["moved"], f"main-host move to h1: {res['migration']}")
    _done(res["pull"])
    layout = ops.layout()
    _check(set(layout) == {ops.name("h1")}, f"pages left elsewhere: {layout}")
    ops.wait_for(lambda: not ops.agent("h4").stats()["files"], 30, "h4 to release the RAM")
    out["reintegration"] = {**res, "layout": layout}
    # 4. the move as Nova's driver runs it (agent calls around a libvirt migration it
    #    does not run itself): h1 -> h4
    res = ops.driver_main_move("h4")
    _done(res["pull"])
    _check(ctx.main.host == ops.name("h4"), "h4 is not the main host after the driver move")
    ops.wait_for(lambda: not ops.agent("h1").stats()["files"], 30, "h1 to release the RAM")
    out["driver_main_move"] = {**res, "layout": ops.layout()}
    _check(ops.name("h1") not in out["driver_main_move"]["layout"],
           f"h1 still holds pages: {out['driver_main_move']['layout']}")
    out["reboot"] = ops.reboot_guest()
    return out


def _refused(call: Callable[[], Any], cls: type[BaseException], match: str) -> str:
    """The message of the error ``call`` must raise."""
    try:
        call()
    except cls as exc:
        msg = str(exc).split("\n", 1)[0]      # without the remote traceback
        _check(match in msg, f"refused, but {msg!r} does not say {match!r}")
        return msg
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's failure
        raise ScenarioFailed(f"expected {cls.__name__} ({match}), got {exc!r}") from exc
    raise ScenarioFailed(f"accepted a request that must be refused ({match})")


def bad_requests(ctx: LabContext, ops: LabOps | None = None) -> dict[str, Any]:
    """Requests the engine must refuse with a clear error, changing nothing."""
    from nova_ipmigrate import exception

    ops = ops or LabOps(ctx)
    api, c = ops.engine, context()
    before_ops = len(api.list_operations(c))
    before = ops.layout()
    before_agent_ops = len(ctx.main.call("ops")["ops"])
    h1, h2, h3, h4 = (ops.name(h) for h in ("h1", "h2", "h3", "h4"))
    vm = ctx.vm
    out = {
        "unknown_vm": _refused(lambda: api.partial_migration(c, "0" * 32, h2),
                               exception.NotFound, "no known host is the main host"),
        "unknown_host": _refused(lambda: api.partial_migration(c, vm, "nowhere"),
                                 exception.Invalid, "not a known host"),
        "not_holding": _refused(lambda: api.partial_migration(c, vm, h4, dest_host=h2),
                                exception.Invalid, f"{h4} holds no part"),
        "main_host_as_source": _refused(lambda: api.partial_migration(c, vm, h1),
                                        exception.Invalid, "is the main host"),
        "dest_is_source": _refused(lambda: api.partial_migration(c, vm, h2, dest_host=h2),
                                   exception.Invalid, "must differ from the source"),
        "bad_rate": _refused(lambda: api.partial_migration(c, vm, h2, max_rate_mb_s=-1),
                             exception.Invalid, "max_rate_mb_s"),
        "bad_strategy": _refused(lambda: api.partial_migration(c, vm, h2, strategy="warp"),
                                 exception.Invalid, "unknown strategy"),
        "malformed_rpc": _refused(
            lambda: api.client.prepare(version="1.0").call(c, "partial_migration", vm=[vm],
                                                           source_host=h2),
            exception.Invalid, "vm must be a non-empty string"),
        "unknown_argument": _refused(
            lambda: api.client.prepare(version="1.0").call(c, "host_drain", host=h2,
                                                           force=True),
            exception.Invalid, "unexpected keyword argument"),
        "unknown_operation": _refused(lambda: api.show_operation(c, "nope"),
                                      exception.NotFound, "no operation"),
        "self_excluded_drain": _refused(lambda: api.host_drain(c, h3, exclude=[h3]),
                                        exception.Invalid, "cannot be excluded"),
    }
    # h4's store is made too small for a part (``substore_mb_by_host``)
    out["no_capacity"] = _refused(lambda: api.partial_migration(c, vm, h2, dest_host=h4),
                                  exception.InsufficientCapacity, f"{h4} has room for")
    _check(len(api.list_operations(c)) == before_ops, "a refused request created an operation")
    after = ops.layout()
    # the guest pages all the time: the counts change, the holders must not
    _check(set(after) == set(before), f"a refused request moved a part: {before} -> {after}")
    _check(len(ctx.main.call("ops")["ops"]) == before_agent_ops,
           "a refused request started an operation on the main host's agent")
    return out


def engine_failures(ctx: LabContext, ops: LabOps | None = None) -> dict[str, Any]:
    """The control plane fails under running part moves (needs the control plane and
    4 hosts: the VM on h1, parts on h2 and h3, h4 with a store too small for a part):

    * bad requests are refused and change nothing (:func:`bad_requests`);
    * the engine is killed (``kill -9``) mid-move and restarted: the move resumes
      (the same agent operation) and completes; a second request for the VM
      meanwhile is refused (``Conflict``);
    * an abort, then at once ``kill -9`` of the engine: the restarted engine
      finishes the rollback (aborted, the source still owns its part);
    * RabbitMQ is killed and restarted mid-move: the move completes;
    * the engine is killed mid-move, and the destination's agent dies while it is
      down: the restarted engine finds the move failed and rolled back (the
      source owns its part, the dead host nothing);
    * the VM is reintegrated through the engine at the end.
    """
    from nova_ipmigrate import exception

    ops = ops or LabOps(ctx)
    cp = ctx.control
    if cp is None:
        raise ScenarioFailed("engine_failures needs the control plane")
    out: dict[str, Any] = {"layout_before": ops.layout(), "bad_requests": bad_requests(ctx, ops)}

    def started(op: dict[str, Any]) -> None:
        ops.wait_for(lambda: ops.copied(op) > 0, 60, "the copy to start")

    # 1. resume after kill -9
    op = ops.start_partial("h2", "h3", max_rate_mb_s=20)
    started(op)
    out["conflict"] = _refused(lambda: ops.start_partial("h3", "h2"), exception.Conflict,
                               "has an active partial_migration")
    agent_op = ops.status(op)["agent_op_id"]
    cp.kill_engine()
    time.sleep(1.0)
    cp.start_engine()
    op = _done(ops.wait(op))
    _check(op["agent_op_id"] == agent_op, f"the restarted engine started another agent "
                                          f"operation ({op['agent_op_id']} != {agent_op})")
    _check(ops.held("h2") == 0, f"h2 holds pages after the resumed move: {ops.layout()}")
    out["resumed"] = op
    # 2. abort, engine killed right after: rolled back by the restarted engine
    op = ops.start_partial("h3", "h2", max_rate_mb_s=20)
    started(op)
    ops.abort(op)
    cp.kill_engine()
    cp.start_engine()
    op = ops.wait(op)
    _check(op["state"] == "aborted", f"abort across an engine restart ended {op['state']}: "
                                     f"{op.get('fault')}")
    layout = ops.layout()
    _check(layout.get(ops.name("h2"), 0) == 0, f"the aborted destination owns pages: {layout}")
    _check(layout.get(ops.name("h3"), 0) > 0, f"h3 lost its part in the rollback: {layout}")
    ops.wait_for(lambda: ops.staged("h2") == 0, 60, "staged copies to be dropped at h2")
    out["aborted_across_restart"] = op
    # 3. RabbitMQ killed and restarted mid-move
    op = ops.start_partial("h3", "h2", max_rate_mb_s=40)
    started(op)
    t0 = time.monotonic()
    cp.broker.restart(hard=True)
    out["broker_restart_s"] = round(time.monotonic() - t0, 1)
    op = _done(ops.wait(op))
    _check(ops.held("h3") == 0, "h3 still holds pages after its part moved")
    out["broker_restarted"] = op
    # 4. engine down; the destination dies meanwhile: failed, rolled back
    op = ops.start_partial("h2", "h3", max_rate_mb_s=20)
    started(op)
    cp.kill_engine()
    os.kill(ops.agent("h3").pid, signal.SIGKILL)
    time.sleep(1.0)
    cp.start_engine()
    op = ops.wait(op)
    _check(op["state"] == "failed", f"a move whose destination died ended {op['state']}")
    layout = ops.layout()
    _check(layout.get(ops.name("h3"), 0) == 0, f"the dead destination owns pages: {layout}")
    _check(layout.get(ops.name("h2"), 0) > 0, f"h2 does not own its part: {layout}")
    out["rolled_back"] = op
    # 5. everything home
    return _reintegrate_all(ctx, ops, out)


def full(ctx: LabContext) -> dict[str, Any]:
    """The demo: every operation in turn (needs 4 hosts).

    Sub-host moves (h2's part to h4, an abort, a killed destination h2); h2's agent
    is brought back and the main host moves h1 -> h2 (when the guest is a libvirt
    domain); then h3 is drained and the VM reintegrated onto its main host.
    """
    ops = LabOps(ctx)
    ops.snapshot("memory-map-0-split")
    out: dict[str, Any] = {"sub_host_moves": sub_host_moves(ctx, ops)}
    ops.snapshot("memory-map-1-after-partial-migration")
    if ctx.libvirtds:
        ops.log("-- h2's agent is back (an operator restarted it); main-host migration "
                "h1 -> h2")
        ops.agent("h2").start()
        if ops.control is not None:
            ops.control.wait_agents()
        res = ops.main_move("h2")
        _check(res["moved"], f"main-host migration to h2: {res['migration'].get('fault')}")
        _done(res["pull"])
        out["main_host_migration"] = {**res, "layout": ops.layout()}
        ops.snapshot("memory-map-2-after-main-host-migration")
    out["drain_and_reintegrate"] = drain_and_reintegrate(ctx, ops)
    ops.snapshot("memory-map-3-reintegrated")
    return out


def _op_id(res: CLIResult) -> str:
    """The operation ID ``server migrate --partial`` prints (``Partial migration <id>
    accepted ...``)."""
    words = res.out.split()
    _check(len(words) > 2 and words[1] == "migration",
           f"unexpected output of server migrate --partial: {res.out!r}")
    return words[2]


def operator_cli(ctx: LabContext, ops: LabOps | None = None) -> dict[str, Any]:
    """The operator's workflow, through the ``openstack`` CLI and ``ipmigrate-api``:
    take h2, then h3 out of service while the VM runs, then bring the VM home.

    Needs 4 hosts (the VM on h1 over h2 and h3, h4 spare) and the control plane
    with its API (``SplitParams.api``). Bad requests first (each refused with its
    HTTP error, nothing changed); ``server migrate --partial h2 --host h4 --wait``
    with its progress bar; the operation listed and shown; a rate-capped move
    h3 -> h2, a conflicting reintegration refused while it runs, its abort;
    ``compute host drain h3``; ``server reintegrate``; ``server memory show``
    before and after.
    """
    ops = ops or LabOps(ctx)
    cp = ops.control
    if cp is None or cp.api_service is None:
        raise ScenarioFailed("operator-cli needs the control plane with ipmigrate-api")
    cli = OpenStackCLI(cp.api_service.url, log=ops.log)
    vm, name = ctx.vm, ops.name
    out: dict[str, Any] = {}

    mem = cli.json("server", "memory", "show", vm)
    by_host = {h["host"]: h for h in mem["hosts"]}
    _check(mem["main_host"] == name("h1") and by_host.get(name("h2"), {}).get("bytes", 0) > 0,
           f"memory show: {mem}")
    out["memory_before"] = mem

    # -- bad requests: each refused with its HTTP error, nothing changed -------------
    listed = cli.json("server", "partial", "migration", "list")
    holders = set(ops.layout())
    refused = {}
    for what, args, token, expect in [
            ("non-admin", ("server", "memory", "show", vm), "demo:demo", "HTTP 403"),
            ("non-admin move", ("server", "migrate", "--partial", name("h2"), vm),
             "demo:demo", "HTTP 403"),
            ("unknown server", ("server", "migrate", "--partial", name("h2"),
                                str(uuid.uuid4())), ADMIN, "HTTP 404"),
            ("a host holding no part", ("server", "migrate", "--partial", name("h4"), vm),
             ADMIN, "HTTP 400"),
            ("destination = source", ("server", "migrate", "--partial", name("h2"),
                                      "--host", name("h2"), vm), ADMIN, "HTTP 400"),
            ("unknown host", ("compute", "host", "drain", "no-such-host"), ADMIN,
             "HTTP 400"),
            ("unknown operation", ("server", "partial", "migration", "abort",
                                   str(uuid.uuid4())), ADMIN, "HTTP 404")]:
        res = cli.run(*args, token=token, check=False)
        _check(res.rc == 1 and expect in res.err,
               f"{what}: exit {res.rc}, wanted {expect}: {res.err.strip()}")
        refused[what] = res.err.strip().splitlines()[-1]
    _check(cli.json("server", "partial", "migration", "list") == listed,
           "a refused request left an operation")
    _check(set(ops.layout()) == holders, "a refused request moved pages")
    out["refused"] = refused

    # -- h2 into maintenance: its part to h4 ------------------------------------------
    res = cli.run("server", "migrate", "--partial", name("h2"), "--host", name("h4"), vm,
                  "--wait")
    _check(bool(res.progress), "server migrate --partial --wait showed no progress")
    op_id = _op_id(res)
    op = cli.json("server", "partial", "migration", "show", op_id)
    _check(op["state"] == "done" and op["progress"]["percent"] == 100.0, f"{op}")
    _check(ops.held("h2") == 0, "h2 still holds pages of the VM after its part moved")
    _check(ops.layout().get(name("h4"), 0) > 0, "h4 owns nothing after the move")
    rows = cli.json("server", "partial", "migration", "list", "--server", vm, "--long")
    _check(any(r["ID"] == op_id and r["State"] == "done" for r in rows),
           f"partial migration list misses {op_id}")
    out["partial_migration"] = {**op, "progress_lines": len(res.progress)}

    # -- an abort mid-transfer; a conflicting request meanwhile -----------------------
    res = cli.run("server", "migrate", "--partial", name("h3"), "--host", name("h2"),
                  "--max-rate", "5", vm)
    slow = _op_id(res)
    ops.wait_for(lambda: ops.copied({"id": slow}) > 0, 60, "the copy to start")
    n_ops = len(ops.engine.list_operations(context()))
    res = cli.run("server", "reintegrate", vm, check=False)
    _check(res.rc == 1 and "HTTP 409" in res.err,
           f"a reintegration during a move: exit {res.rc}: {res.err.strip()}")
    _check(len(ops.engine.list_operations(context())) == n_ops,
           "the refused reintegration left an operation")
    cli.run("server", "partial", "migration", "abort", slow, "--wait")
    op = cli.json("server", "partial", "migration", "show", slow)
    _check(op["state"] == "aborted", f"abort ended {op['state']}")
    # (h2 may hold pages of the VM by now: a holder since the move began, it is
    # open for the guest's page-outs; the staged copies are under another key)
    ops.wait_for(lambda: ops.staged("h2") == 0, 60, "staged copies to be dropped at h2")
    _check(ops.held("h3") > 0, "h3 lost its part in the aborted move")
    res = cli.run("server", "partial", "migration", "abort", slow, check=False)
    _check(res.rc == 1 and "HTTP 409" in res.err, "a second abort was not refused")
    out["abort"] = op

    # -- h3 into maintenance: drain it (h2 is due next, excluded) ----------------------
    drain = cli.json("compute", "host", "drain", name("h3"), "--exclude", name("h2"),
                     "--wait")
    _check(drain["state"] == "done" and drain.get("children")
           and all(c["state"] == "done" for c in drain["children"]), f"drain: {drain}")
    _check(ops.held("h3") == 0, "h3 still holds pages after the drain")
    out["drain"] = drain

    # -- back home --------------------------------------------------------------------
    op = cli.json("server", "reintegrate", vm, "--wait")
    _check(op["state"] == "done", f"reintegration: {op}")
    mem = cli.json("server", "memory", "show", vm)
    _check([h["host"] for h in mem["hosts"] if h["pages"]] == [name("h1")],
           f"pages left on sub-hosts: {mem['hosts']}")
    out["reintegration"] = op
    out["memory_after"] = mem
    out["commands"] = len(cli.history)
    return out


SCENARIOS: dict[str, Callable[[LabContext], dict[str, Any]]] = {
    "main-host-moves": main_host_moves,
    "sub-host-moves": sub_host_moves,
    "drain-reintegrate": drain_and_reintegrate,
    "full": full,
    "engine-failures": engine_failures,
    "operator-cli": operator_cli,
}


def report(result: dict[str, Any]) -> str:
    """One line per operation a scenario ran (its result dict, walked recursively)."""
    lines: list[str] = []

    def walk(name: str, node: Any) -> None:
        if isinstance(node, dict) and "kind" in node and "progress" in node:
            pr = node["progress"] or {}
            if "elapsed_s" not in pr:      # a host drain, a split: its parts are listed
                lines.append(f"  {name:42s} {node['state']:8s} {node['kind']}")
                return
            lines.append(
                f"  {name:42s} {node['state']:8s} {pr['elapsed_s']:6.2f}s "
                f"{pr.get('bytes_total', 0) / 2**20:7.1f} MiB  re-sent "
                f"{pr.get('resent', 0):6d}  invalidated {pr.get('invalidated', 0):6d}  "
                f"orphans {pr.get('orphans', 0):4d}")
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(f"{name}.{k}" if name else k, v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{name}[{i}]", v)

    walk("", result)
    return "\n".join(["operations:", *lines]) if lines else "operations: none"
