"""Lab operations (``lab.scenario.LabOps``) against fake agents: no lab, no root.

:class:`FakeLab` keeps what the agents would report (each VM's pages by host,
each host's sub-host store) and answers their control calls; an operation
runs for ``steps`` status calls, then ends and, when it is done, its pages move.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.lab.multihost import LabContext
from nova_ipmigrate.lab.progress import ProgressPrinter
from nova_ipmigrate.lab.scenario import LabOps, ScenarioFailed, drain_and_reintegrate

VM_A = "aaaaaaaa-0000-4000-8000-000000000001"
VM_B = "bbbbbbbb-0000-4000-8000-000000000002"


class FakeLab:
    def __init__(self, hosts: dict[str, str], capacity: int = 1000, steps: int = 2) -> None:
        self.agents = {lab: FakeAgent(self, host) for lab, host in hosts.items()}
        self.capacity = capacity
        self.steps = steps
        #: vm -> {main, path, pages_by_host}
        self.vms: dict[str, dict[str, Any]] = {}
        self.ops: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._ids = itertools.count(1)
        #: the state an operation ends in
        self.ends = "done"

    def add_vm(self, vm: str, main: str, path: str = "/ram/pc.ram", **pages: int) -> None:
        self.vms[vm] = {"main": main, "path": path, "pages_by_host": dict(pages)}

    def used(self, host: str) -> int:
        return sum(v["pages_by_host"].get(host, 0) for v in self.vms.values()
                   if v["main"] != host)

    def vm_at(self, main: str, path: str) -> str:
        [vm] = [v for v, d in self.vms.items() if d["main"] == main and d["path"] == path]
        return vm

    def new_op(self, main: str, kind: str, **what: Any) -> dict[str, Any]:
        op = {"id": f"{main}-{next(self._ids)}", "kind": kind, "state": "running",
              "fault": None, "left": self.steps, "main": main, "progress": {
                  "bytes_total": 100, "bytes_done": 0, "copied": 0}, **what}
        self.ops[op["id"]] = op
        return self.reply(op)

    @staticmethod
    def reply(op: dict[str, Any]) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in op.items()
                if k not in ("left", "main")}

    def status(self, op_id: str) -> dict[str, Any]:
        op = self.ops[op_id]
        if op["state"] == "running":
            op["left"] -= 1
            op["progress"]["copied"] += 1
            op["progress"]["bytes_done"] = min(100, op["progress"]["bytes_done"] + 50)
            if op["left"] <= 0:
                op["state"] = self.ends
                if self.ends == "done":
                    self.apply(op)
        return self.reply(op)

    def apply(self, op: dict[str, Any]) -> None:
        pages = self.vms[op["vm"]]["pages_by_host"]
        if op["kind"] == "partial_migration":
            n = pages.pop(op["source"], 0)
            pages[op["dest"]] = pages.get(op["dest"], 0) + n
        else:
            main = op["main"]
            total = sum(pages.values())
            pages.clear()
            pages[main] = total


class FakeAgent:
    def __init__(self, lab: FakeLab, host: str) -> None:
        self.lab = lab
        self.host = host
        self.up = True

    def alive(self) -> bool:
        return self.up

    def sub_host_entry(self) -> dict[str, Any]:
        return {"name": self.host, "address": f"10.0.0.{len(self.host)}", "port": 47800}

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        lab = self.lab
        lab.calls.append((self.host, op, args))
        assert self.up, f"call to a dead agent {self.host}"
        if op == "parts":
            return {"ok": True, "host": self.host, "vms": [
                {"path": d["path"], "vm": vm, "main_host": self.host,
                 "holders": sorted(h for h in d["pages_by_host"] if h != self.host),
                 "pages_by_host": dict(d["pages_by_host"]), "broken": False}
                for vm, d in lab.vms.items() if d["main"] == self.host]}
        if op == "agent_stats":
            return {"ok": True, "host": self.host, "substore": {
                "capacity_pages": lab.capacity, "used_pages": lab.used(self.host),
                "vms": {vm: d["pages_by_host"][self.host] for vm, d in lab.vms.items()
                        if d["main"] != self.host and self.host in d["pages_by_host"]}}}
        if op == "partial_migrate":
            vm = lab.vm_at(self.host, args["path"])
            return lab.new_op(self.host, "partial_migration", vm=vm, source=args["source"],
                              dest=args["dest"]["name"], path=args["path"])
        if op == "reintegrate":
            vm = lab.vm_at(self.host, args["path"])
            return lab.new_op(self.host, "reintegration", vm=vm, source=None,
                              dest=self.host, path=args["path"])
        if op == "op_status":
            assert lab.ops[args["id"]]["main"] == self.host, "status asked of another host"
            return lab.status(args["id"])
        if op == "op_abort":
            o = lab.ops[args["id"]]
            o["state"] = "aborted"
            o["fault"] = "aborted by request"
            return lab.reply(o)
        raise AssertionError(f"unexpected call {op}")


HOSTS = {"h1": "node-1", "h2": "node-2", "h3": "node-3", "h4": "node-4"}


def make(lab: FakeLab, vm: str = VM_A) -> tuple[LabOps, io.StringIO, list[str]]:
    agents: dict[str, Any] = dict(lab.agents)
    ctx = LabContext(agents, agents["h1"], vm, "/ram/pc.ram", Path("/nonexistent"),
                     lambda: True)
    out = io.StringIO()
    logged: list[str] = []
    return LabOps(ctx, ProgressPrinter(out, interval=0), logged.append), out, logged


@pytest.fixture
def lab() -> FakeLab:
    lab = FakeLab(HOSTS)
    lab.add_vm(VM_A, "node-1", **{"node-1": 50, "node-2": 300, "node-3": 200})
    return lab


def test_hosts_by_lab_name_or_host_name(lab: FakeLab) -> None:
    ops, _, _ = make(lab)
    assert ops.agent("h2") is lab.agents["h2"] and ops.agent("node-2") is lab.agents["h2"]
    assert ops.name("h3") == "node-3"
    with pytest.raises(KeyError, match="no lab host 'h9'"):
        ops.agent("h9")
    lab.agents["h4"].up = False
    assert [a.host for a in ops.alive()] == ["node-1", "node-2", "node-3"]


def test_layout_and_held(lab: FakeLab) -> None:
    ops, _, _ = make(lab)
    assert ops.layout() == {"node-1": 50, "node-2": 300, "node-3": 200}
    assert ops.held("h2") == 300 and ops.held("node-3") == 200 and ops.held("h4") == 0
    other, _, _ = make(lab, vm=VM_B)
    with pytest.raises(ScenarioFailed, match=f"no split VM {VM_B}"):
        other.layout()


def test_start_partial_names_the_hosts_as_the_agents_know_them(lab: FakeLab) -> None:
    ops, _, _ = make(lab)
    op = ops.start_partial("h2", "h4", max_rate_mb_s=20)
    host, call, args = lab.calls[-1]
    assert (host, call) == ("node-1", "partial_migrate")
    assert args == {"path": "/ram/pc.ram", "source": "node-2",
                    "dest": lab.agents["h4"].sub_host_entry(), "strategy": "ipmigrate",
                    "max_rate_mb_s": 20}
    assert op["state"] == "running"
    ops.start_partial("h2", "h4", strategy="naive")
    assert "max_rate_mb_s" not in lab.calls[-1][2]
    assert lab.calls[-1][2]["strategy"] == "naive"


def test_wait_shows_the_progress_until_the_end(lab: FakeLab) -> None:
    lab.steps = 3
    ops, out, _ = make(lab)
    op = ops.partial("h2", "h4")
    assert op["state"] == "done"
    statuses = [a for _h, c, a in lab.calls if c == "op_status"]
    assert len(statuses) == 3 and all(a["wait"] == 0.5 for a in statuses)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].endswith("DONE")
    assert ops.layout() == {"node-1": 50, "node-4": 300, "node-3": 200}


def test_wait_gives_up_and_aborts_after_its_timeout(lab: FakeLab) -> None:
    lab.steps = 10**9
    ops, _, _ = make(lab)
    op = ops.start_partial("h2", "h4")
    with pytest.raises(ScenarioFailed, match=f"operation {op['id']} did not end in 0s"):
        ops.wait(op, timeout=0)
    assert lab.calls[-1][1:] == ("op_abort", {"id": op["id"]})
    assert ops.status(op)["state"] == "aborted"


def test_abort_and_wait_for(lab: FakeLab) -> None:
    lab.steps = 10**9
    ops, _, _ = make(lab)
    op = ops.start_partial("h2", "h4")
    ops.wait_for(lambda: ops.status(op)["progress"]["copied"] > 1, 5, "the copy")
    assert ops.abort(op)["state"] == "aborted"
    assert ops.wait(op)["fault"] == "aborted by request"
    with pytest.raises(ScenarioFailed, match="timed out waiting for nothing"):
        ops.wait_for(lambda: False, 0, "nothing")


def test_drain_moves_every_part_to_the_planned_hosts(lab: FakeLab) -> None:
    # node-2 is the main host of VM B, whose part on node-3 moves too (asked of node-2).
    lab.add_vm(VM_B, "node-2", path="/b/pc.ram", **{"node-2": 10, "node-3": 100})
    ops, out, logged = make(lab)
    d = ops.drain("h3")
    results = d["ops"]
    assert d["complete"] and d["moves"] == 2 and d["op"] is None
    assert d["plan"].startswith("drain node-3: 2 part move(s)")
    # A's part joins A's other part on node-2; B's goes to the host with the most room
    # (node-2 is B's main host, node-1 has 1000 free, node-4 too: the tie goes by name).
    migrate = [(h, a) for h, c, a in lab.calls if c == "partial_migrate"]
    assert sorted((h, a["path"], a["source"], a["dest"]["name"]) for h, a in migrate) == [
        ("node-1", "/ram/pc.ram", "node-3", "node-2"),
        ("node-2", "/b/pc.ram", "node-3", "node-4")]
    assert all(a["dest"] == lab.agents[k].sub_host_entry()
               for (_h, a), k in zip(sorted(migrate, key=lambda x: x[1]["path"]),
                                     ("h4", "h2"), strict=True))
    assert [r["state"] for r in results] == ["done", "done"]
    assert logged and logged[0].startswith("drain node-3: 2 part move(s)")
    assert ops.held("h3") == 0
    assert "DONE" in out.getvalue()


def test_drain_skips_dead_and_excluded_hosts(lab: FakeLab) -> None:
    lab.agents["h4"].up = False
    ops, _, _ = make(lab)
    d = ops.drain("node-3", exclude=("h2",))
    # node-2 (holds a part) is excluded, node-4 is down: nowhere else to go
    assert d["moves"] == 0 and not d["complete"] and d["ops"] == []
    assert f"{VM_A}" in d["plan"] and "not placed" in d["plan"]
    assert not any(h == "node-4" for h, _c, _a in lab.calls)


def test_drain_of_a_main_host_reports_its_vms(lab: FakeLab) -> None:
    ops, _, logged = make(lab)
    d = ops.drain("h1")
    assert d["moves"] == 0 and d["ops"] == []
    assert VM_A in d["plan"] and "needs the main-host move" in logged[0]


def test_the_drain_and_reintegrate_scenario(lab: FakeLab) -> None:
    ops, _, _ = make(lab)
    ctx = ops.ctx
    out = drain_and_reintegrate(ctx, ops)
    assert out["layout_before"] == {"node-1": 50, "node-2": 300, "node-3": 200}
    # h2 (alive) is excluded: h3's part goes to the spare h4
    assert out["drain"]["layout"] == {"node-1": 50, "node-2": 300, "node-4": 200}
    assert "node-3 -> node-4" in out["drain"]["plan"]
    assert out["reintegration"]["state"] == "done"
    assert out["layout_after"] == {"node-1": 550}
    reint = [(h, a) for h, c, a in lab.calls if c == "reintegrate"]
    assert reint == [("node-1", {"path": "/ram/pc.ram", "strategy": "ipmigrate"})]


def test_the_drain_and_reintegrate_scenario_without_h2(lab: FakeLab) -> None:
    lab.agents["h2"].up = False
    lab.vms[VM_A]["pages_by_host"] = {"node-1": 50, "node-3": 200}
    ops, _, _ = make(lab)
    out = drain_and_reintegrate(ops.ctx, ops)
    assert out["drain"]["layout"] == {"node-1": 50, "node-4": 200}
    assert out["layout_after"] == {"node-1": 250}


def test_the_scenario_fails_when_an_operation_does_not_end_done(lab: FakeLab) -> None:
    lab.ends = "failed"
    ops, _, _ = make(lab)
    with pytest.raises(ScenarioFailed, match="ended failed"):
        drain_and_reintegrate(ops.ctx, ops)
