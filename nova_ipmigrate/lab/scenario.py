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
import time
from collections.abc import Callable
from typing import Any

from nova_ipmigrate.lab.memfsd import AgentDaemon
from nova_ipmigrate.lab.multihost import LabContext
from nova_ipmigrate.lab.progress import ProgressPrinter
from nova_ipmigrate.migration.drain import DrainPlan, Part, plan_drain

LOG = logging.getLogger(__name__)
PAGE = 4096


class ScenarioFailed(AssertionError):
    """A step of a scenario did not end as it must."""


class LabOps:
    def __init__(self, ctx: LabContext, progress: ProgressPrinter | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.progress = progress or ProgressPrinter()
        self.log = log or (lambda line: print(line, flush=True))

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

    def layout(self) -> dict[str, int]:
        """Pages of the VM on each host, as the main host's directory says."""
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

    def start_partial(self, source: str, dest: str, strategy: str = "ipmigrate",
                      max_rate_mb_s: float | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"path": self.ctx.path, "source": self.name(source),
                                "dest": self.agent(dest).sub_host_entry(),
                                "strategy": strategy}
        if max_rate_mb_s:
            args["max_rate_mb_s"] = max_rate_mb_s
        return self.ctx.main.call("partial_migrate", **args)

    def partial(self, source: str, dest: str, strategy: str = "ipmigrate") -> dict[str, Any]:
        return self.wait(self.start_partial(source, dest, strategy))

    def reintegrate(self, strategy: str = "ipmigrate") -> dict[str, Any]:
        return self.wait(self.ctx.main.call("reintegrate", path=self.ctx.path,
                                            strategy=strategy))

    def status(self, op: dict[str, Any]) -> dict[str, Any]:
        return self.ctx.main.call("op_status", id=op["id"])

    def abort(self, op: dict[str, Any]) -> dict[str, Any]:
        return self.ctx.main.call("op_abort", id=op["id"])

    def wait(self, op: dict[str, Any], timeout: float = 600.0,
             main: AgentDaemon | None = None) -> dict[str, Any]:
        """Wait for an operation to end, showing its progress."""
        agent = main or self.ctx.main
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

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"timed out waiting for {what}")
            time.sleep(0.05)

    def drain(self, host: str, exclude: tuple[str, ...] = ()) -> tuple[DrainPlan,
                                                                       list[dict[str, Any]]]:
        """Move every part the host holds elsewhere; returns the plan and the results."""
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
        return plan, [self.wait(op, main=main) for main, op in started]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ScenarioFailed(message)


def _done(op: dict[str, Any]) -> dict[str, Any]:
    _check(op["state"] == "done", f"operation {op['id']} ended {op['state']}: {op.get('fault')}")
    return op


# -- scenarios ------------------------------------------------------------------------


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
    ops.wait_for(lambda: ops.status(op)["progress"]["copied"] > 0, 60, "the copy to start")
    ops.abort(op)
    op = ops.wait(op)
    _check(op["state"] == "aborted", f"abort ended {op['state']}")
    _check(ops.layout().get(ops.name("h2"), 0) == 0, "the aborted destination owns pages")
    ops.wait_for(lambda: ops.held("h2") == 0, 30, "staged copies to be dropped at h2")
    out["abort"] = op
    # The destination's agent dies mid-transfer: the source keeps its part.
    op = ops.start_partial("h3", "h2", max_rate_mb_s=20)
    ops.wait_for(lambda: ops.status(op)["progress"]["copied"] > 0, 60, "the copy to start")
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
    plan, results = ops.drain("h3", exclude=exclude)
    _check(bool(plan.moves) and plan.complete, plan.summary())
    for r in results:
        _done(r)
    _check(ops.held("h3") == 0, "h3 still holds pages after the drain")
    out["drain"] = {"plan": plan.summary(), "ops": results, "layout": ops.layout()}
    op = _done(ops.reintegrate())
    layout = ops.layout()
    _check(set(layout) == {ctx.main.host}, f"pages left on sub-hosts: {layout}")
    out["reintegration"] = op
    out["layout_after"] = layout
    return out


def full(ctx: LabContext) -> dict[str, Any]:
    """The demo: every operation in turn (needs 4 hosts)."""
    ops = LabOps(ctx)
    ops.snapshot("memory-map-0-split")
    moves = sub_host_moves(ctx, ops)
    ops.snapshot("memory-map-1-after-partial-migration")
    rest = drain_and_reintegrate(ctx, ops)
    ops.snapshot("memory-map-2-reintegrated")
    return {"sub_host_moves": moves, "drain_and_reintegrate": rest}


SCENARIOS: dict[str, Callable[[LabContext], dict[str, Any]]] = {
    "sub-host-moves": sub_host_moves,
    "drain-reintegrate": drain_and_reintegrate,
    "full": full,
}


def report(result: dict[str, Any]) -> str:
    """One line per operation a scenario ran (its result dict, walked recursively)."""
    lines: list[str] = []

    def walk(name: str, node: Any) -> None:
        if isinstance(node, dict) and "kind" in node and "progress" in node:
            pr = node["progress"]
            lines.append(
                f"  {name:42s} {node['state']:8s} {pr['elapsed_s']:6.2f}s "
                f"{pr['bytes_total'] / 2**20:7.1f} MiB  re-sent {pr['resent']:6d}  "
                f"invalidated {pr['invalidated']:6d}  orphans {pr['orphans']:4d}")
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(f"{name}.{k}" if name else k, v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{name}[{i}]", v)

    walk("", result)
    return "\n".join(["operations:", *lines]) if lines else "operations: none"
