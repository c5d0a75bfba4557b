"""The engine's worker: runs operations as persistent state machines.

Every step reads the operation from the database, does at most one side effect
(an agent call) and persists the outcome with an optimistic update; a step
whose operation changed meanwhile (an abort) is simply looked at again on the
next pass. Steps are idempotent, so a restarted engine resumes every
unfinished operation where the database says it is:

partial migration / reintegration (a part move, run by the VM's main host)::

    queued --admission--> running/starting --agent start (request_id = op id)-->
    running/running --op_status polls--> done | failed | aborted
    aborting --op_abort (again after a restart)--> wait for the agent op --> aborted

    An agent that no longer knows its operation (it restarted) ends the operation
    ``failed``: the data plane rolled the part move back, or the VM is gone.

main-host migration (the old main host's agent runs the libvirt step, the new one
the pull)::

    queued -> running/starting --dest incoming_prepare, source main_migrate
    (request_id = op id)--> running/migrating --op_status polls--> done:
    running/committing --dest incoming_commit (request_id = op id + "-pull"; the
    VM's main host is the destination from here)--> running/pulling (polled like a
    part move) --> done | failed | aborted
    migrating ended failed/aborted --> cleaning --dest incoming_abort (again while
    its incoming QEMU goes)--> failed | aborted; the VM goes on at its main host
    aborting before the switch: op_abort at the source (libvirt's job abort);
    after it: the pull is aborted (the old main host keeps its part, as a holder)

split:  queued -> running/starting --agent split (skipped if already split)--> done
host drain: queued -> running/planning --plan, queued children--> running/waiting
    --all children ended--> done | failed;  aborting: abort children --> aborted

Admission (FIFO): a part move starts when its VM runs nothing else and no host
it touches (source or destination) runs ``max_ops_per_host`` part moves and its
links (source -> destination) run fewer than ``max_ops_per_link``; a move that
must wait holds back later moves that need the same hosts or links.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from typing import Any

import futurist

from nova_ipmigrate import exception
from nova_ipmigrate.engine.backend import RECORD, Backend
from nova_ipmigrate.engine.db import Database, StaleOperation
from nova_ipmigrate.engine.inventory import TRANSIENT, Inventory, describe
from nova_ipmigrate.engine.models import MOVES, Operation, utcnow
from nova_ipmigrate.engine.notifications import Notifications
from nova_ipmigrate.migration.drain import DrainPlan, Part, PlannedMove, plan_drain

LOG = logging.getLogger(__name__)

AGENT_FORGOT = ("the agent on {host} no longer knows operation {agent_op} (the agent "
                "restarted?): the data plane rolled back this part move, or the VM is gone")
_END_EVENT = {"done": "end", "failed": "error", "aborted": "abort"}
#: the destination's refusals that a failed main-host move's cleanup asks again after
_CLEANUP_RETRY: tuple[type[BaseException], ...] = (exception.Conflict, *TRANSIENT)


@dataclasses.dataclass(frozen=True)
class ScheduledMove(PlannedMove):
    """A drain's move whose destination the backend chose and claimed."""
    op_id: str = ""
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


def footprint(op: Operation) -> tuple[set[str], set[tuple[str, str]]]:
    """Hosts and links (source, dest) a part move uses."""
    if op.kind == "partial_migration":
        src, dst = str(op.source_host), str(op.dest_host)
        return {src, dst}, {(src, dst)}
    if op.kind == "reintegration":
        main = str(op.main_host)
        sources = [str(s) for s in (op.params or {}).get("sources", [])]
        return {main, *sources}, {(s, main) for s in sources}
    if op.kind == "main_host_migration":
        src, dst = str(op.source_host), str(op.dest_host)
        p = op.params or {}
        sources = [str(s) for s in p.get("sources", [])] if p.get("then") == "reintegrate" \
            else []
        return {src, dst, *sources}, {(src, dst), *((s, dst) for s in sources)}
    return set(), set()


class Worker:
    def __init__(self, db: Database, agents: Any, inventory: Inventory,
                 notifications: Notifications, max_ops_per_host: int = 2,
                 max_ops_per_link: int = 1, poll_interval: float = 1.0,
                 workers: int = 4, ctxt: Any = None, cleanup_timeout: float = 300.0,
                 backend: Backend | None = None) -> None:
        self.db = db
        self.backend = backend or Backend()
        self.cleanup_timeout = cleanup_timeout
        self.agents = agents
        self.inventory = inventory
        self.notify = notifications
        self.max_ops_per_host = max_ops_per_host
        self.max_ops_per_link = max_ops_per_link
        self.poll_interval = poll_interval
        self.workers = workers
        self.ctxt = ctxt if ctxt is not None else {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: futurist.ThreadPoolExecutor | None = None
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()
        #: aborts sent by this process (a restarted engine sends them again)
        self._abort_sent: set[str] = set()

    # -- the loop -------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._pool = futurist.ThreadPoolExecutor(max_workers=self.workers)
        self._thread = threading.Thread(target=self._loop, name="engine-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        LOG.info("engine worker started: %d unfinished operation(s) to resume",
                 len(self.db.active()))
        while not self._stop.is_set():
            try:
                self.tick(self._submit)
            except Exception:  # noqa: BLE001 - the loop survives a bad pass
                LOG.exception("engine worker pass failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _submit(self, op_id: str) -> None:
        with self._inflight_lock:
            if op_id in self._inflight or self._pool is None:
                return
            self._inflight.add(op_id)

        def run() -> None:
            try:
                self.step(op_id)
            finally:
                with self._inflight_lock:
                    self._inflight.discard(op_id)
        fut = self._pool.submit(run)
        fut.add_done_callback(_log_failure)

    def tick(self, run: Callable[[str], None] | None = None) -> None:
        """One pass: admit queued operations, then one step of every active one
        (``run``: how a step is run; default inline)."""
        self.admit()
        for op in self.db.active():
            if op.state == "queued":
                continue
            (run or self.step)(op.id)

    # -- admission ------------------------------------------------------------------

    def admit(self) -> list[str]:
        """Start the queued operations the limits allow, first come first served."""
        active = self.db.active()
        started = [op for op in active if op.state != "queued"]
        busy_vms = {op.vm for op in started if op.kind != "host_drain" and op.vm}
        hosts: Counter[str] = Counter()
        links: Counter[tuple[str, str]] = Counter()
        for op in started:
            if op.kind in MOVES:
                h, lk = footprint(op)
                hosts.update(h)
                links.update(lk)
        held_hosts: set[str] = set()
        held_links: set[tuple[str, str]] = set()
        admitted = []
        for op in active:
            if op.state != "queued":
                continue
            if op.kind in ("host_drain", "split"):
                if op.kind == "split" and op.vm in busy_vms:
                    continue
                step = "planning" if op.kind == "host_drain" else "starting"
            else:
                if op.vm in busy_vms:
                    continue
                h, lk = footprint(op)
                if (any(hosts[x] >= self.max_ops_per_host or x in held_hosts for x in h)
                        or any(links[x] >= self.max_ops_per_link or x in held_links
                               for x in lk)):
                    held_hosts |= h
                    held_links |= lk
                    continue
                hosts.update(h)
                links.update(lk)
                step = "starting"
            try:
                op = self.db.update(op, state="running", step=step, started_at=utcnow())
            except StaleOperation:
                continue        # aborted meanwhile
            if op.vm and op.kind != "host_drain":
                busy_vms.add(op.vm)
            admitted.append(op.id)
            LOG.info("operation %s (%s of %s) starts", op.id, op.kind, op.vm or op.source_host)
            self.notify.emit(op, "start")
        return admitted

    # -- steps ----------------------------------------------------------------------

    def step(self, op_id: str) -> None:
        op = self.db.get(op_id)
        if op is None or op.final or op.state == "queued":
            return
        try:
            if op.kind == "main_host_migration" and op.step in ("starting", "migrating",
                                                                 "cleaning"):
                handler = {"starting": self._main_start, "migrating": self._main_poll,
                           "cleaning": self._main_clean}[op.step]
            elif op.state == "aborting":
                handler = {"host_drain": self._abort_drain}.get(op.kind, self._abort_move)
            else:
                handler = {
                    ("partial_migration", "starting"): self._start_move,
                    ("reintegration", "starting"): self._start_move,
                    ("partial_migration", "running"): self._poll_move,
                    ("reintegration", "running"): self._poll_move,
                    ("main_host_migration", "committing"): self._main_commit,
                    ("main_host_migration", "pulling"): self._poll_move,
                    ("split", "starting"): self._split,
                    ("host_drain", "planning"): self._plan_drain,
                    ("host_drain", "waiting"): self._drain_wait,
                }.get((op.kind, op.step), self._unknown_step)
            handler(op)
        except StaleOperation:
            LOG.debug("operation %s changed meanwhile: looked at again next pass", op_id)
        except TRANSIENT as exc:
            LOG.warning("operation %s (%s): agent unreachable, retrying: %s", op_id,
                        op.step, describe(exc))

    def _unknown_step(self, op: Operation) -> None:
        self._finish(op, "failed", f"unknown step {op.step!r} of a {op.kind} "
                                   f"({op.state}): written by a newer engine?")

    def _finish(self, op: Operation, state: str, fault: str | None = None,
                **values: Any) -> Operation:
        if (op.params or {}).get(RECORD):
            fault = self._settle(op, state, fault)
        op = self.db.update(op, state=state, fault=fault, finished_at=utcnow(),
                            step=state, **values)
        LOG.info("operation %s %s%s", op.id, state, f": {fault}" if fault else "")
        self.notify.emit(op, _END_EVENT[state])
        return op

    def _settle(self, op: Operation, state: str, fault: str | None) -> str | None:
        """The backend commits or gives back the operation's claims before it ends.
        Unreachable (placement down): raised, the step comes again next pass. The
        books refusing what the data plane did: the claims are given back and the
        fault says so (the reconcile reports the drift)."""
        try:
            self.backend.settle(op, state)
            return fault
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - the operation still ends
            why = f"the {self.backend.name} backend did not record it: {describe(exc)}"
            LOG.error("operation %s %s, but %s", op.id, state, why)
            try:
                self.backend.release((op.params or {}).get(RECORD))
            except Exception as rel:  # noqa: BLE001
                LOG.error("operation %s: its claims were not given back: %s", op.id,
                          describe(rel))
            return f"{fault}; {why}" if fault else why

    # part moves

    def _start_move(self, op: Operation) -> None:
        p = op.params or {}
        try:
            if op.kind == "partial_migration":
                res = self.agents.partial_migrate(
                    self.ctxt, op.main_host, op.path, op.source_host, p["dest_endpoint"],
                    strategy=op.strategy or "ipmigrate",
                    max_rate_mb_s=p.get("max_rate_mb_s"), request_id=op.request_id)
            else:
                res = self.agents.reintegrate(self.ctxt, op.main_host, op.path,
                                              strategy=op.strategy or "ipmigrate",
                                              request_id=op.request_id)
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - the agent refused: nothing started
            self._finish(op, "failed", f"the agent on {op.main_host} refused to start: "
                                       f"{describe(exc)}")
            return
        op = self.db.update(op, step="running", agent_op_id=str(res["id"]),
                            progress=res.get("progress") or {})
        self._record(op, res)

    def _agent_status(self, op: Operation) -> dict[str, Any] | None:
        """The agent's view of the operation, re-attached by request id when needed;
        None when the agent does not know it."""
        if op.agent_op_id:
            try:
                return dict(self.agents.op_status(self.ctxt, op.main_host, op.agent_op_id,
                                                  wait=0))
            except exception.NotFound:
                return None
        for a in self.agents.ops(self.ctxt, op.main_host).get("ops", []):
            if a.get("request_id") == op.request_id:
                return dict(a)
        return None

    def _poll_move(self, op: Operation) -> None:
        res = self._agent_status(op)
        if res is None:
            self._finish(op, "failed", AGENT_FORGOT.format(host=op.main_host,
                                                           agent_op=op.agent_op_id))
            return
        if op.agent_op_id != res.get("id"):
            op = self.db.update(op, agent_op_id=str(res["id"]))
        self._record(op, res)

    def _record(self, op: Operation, res: dict[str, Any]) -> None:
        state = str(res.get("state"))
        progress = dict(res.get("progress") or {})
        if res.get("parts"):
            progress["parts"] = list(res["parts"])      # per holder
        if op.kind == "main_host_migration":   # the pull: keep the libvirt step's figures
            progress = {**{k: v for k, v in (op.progress or {}).items()
                           if k in ("migration", "downtime_ms", "directory_ms",
                                    "resumed_at", "remote_pages")}, **progress}
        if state == "running":
            if progress != (op.progress or {}):
                op = self.db.update(op, progress=progress)
            if op.state == "running":
                self.notify.progress(op)
            return
        fault: str | None
        if op.state == "aborting" and state == "done":
            fault = "the part move ended before the abort took effect"
        else:
            fault = res.get("fault") or None
        final = state if state in ("done", "failed", "aborted") else "failed"
        if final != state:
            fault = f"the agent reports an unknown state {state!r}: {fault}"
        if op.kind == "main_host_migration" and final != "done":
            fault = (f"the VM runs on {op.dest_host} now, but pulling the pages of "
                     f"{op.source_host} ended {final} ({fault}): {op.source_host} keeps "
                     f"them as a holder; a partial migration of {op.source_host} moves them")
        self._finish(op, final, fault, progress=progress)

    def _abort_move(self, op: Operation) -> None:
        if not op.agent_op_id and op.step in ("queued", "starting"):
            # Maybe started just before a crash: look for it by request id.
            found = self._agent_status(op) if op.step == "starting" else None
            if found is None:
                self._finish(op, "aborted", "aborted before the agent started it")
                return
            op = self.db.update(op, agent_op_id=str(found["id"]))
        if op.id not in self._abort_sent:
            try:
                self.agents.op_abort(self.ctxt, op.main_host, op.agent_op_id)
            except exception.Conflict:
                pass                     # it ended meanwhile
            except exception.NotFound:
                pass                     # handled below
            self._abort_sent.add(op.id)
        res = self._agent_status(op)
        if res is None:
            self._finish(op, "failed", AGENT_FORGOT.format(host=op.main_host,
                                                           agent_op=op.agent_op_id))
            return
        self._record(op, res)

    # main-host migration

    def _main_start(self, op: Operation) -> None:
        p = op.params or {}
        if op.state == "aborting":
            self._finish(op, "aborted", "aborted before the agent started it")
            return
        if (p.get(RECORD) or {}).get("via"):
            self._backend_main_start(op)
            return
        res = self._agent_status(op)      # started just before a restart?
        if res is None:
            try:
                files = self.agents.stats(self.ctxt, op.main_host)["stats"]["files"]
                f = files[op.path]
                self.agents.incoming_prepare(
                    self.ctxt, op.dest_host, vm=op.vm, size=int(f["size"]),
                    resident_limit=int(f.get("resident_limit_pages", 0)) * 4096,
                    source=p["source_endpoint"])
                res = self.agents.main_migrate(self.ctxt, op.main_host, op.path,
                                               p["dest_endpoint"], request_id=op.request_id)
            except TRANSIENT:
                raise
            except Exception as exc:  # noqa: BLE001 - refused: nothing started
                op = self.db.update(op, step="cleaning", params={
                    **p, "outcome": "failed",
                    "fault": f"the main-host move did not start: {describe(exc)}"})
                self._main_clean(op)
                return
        self.db.update(op, step="migrating", agent_op_id=str(res["id"]),
                       progress=_main_progress(res))

    def _backend_main_start(self, op: Operation) -> None:
        try:
            self.backend.start_main_move(op)
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - refused: nothing started
            self._finish(op, "failed", f"the main-host move did not start: {describe(exc)}; "
                                       f"the VM goes on at {op.main_host}")
            return
        self.db.update(op, step="migrating")

    def _backend_main_poll(self, op: Operation) -> None:
        """Nova's live migration ran; once it completed, the new main host's agent
        pulls the old one's pages (the driver started the pull with the request id
        ``<request id>-pull``)."""
        status, detail = self.backend.main_move_status(op)
        if status in ("running", "unknown"):
            if op.state == "aborting" and op.id not in self._abort_sent:
                LOG.info("operation %s: Nova's live migration is not aborted by the "
                         "engine (openstack server migration abort): it runs on", op.id)
                self._abort_sent.add(op.id)
            return
        if status != "completed":
            # Nova rolls back at the destination only where it cleans disks up: the
            # destination's agent forgets the VM here, as after a failed agent move
            op = self.db.update(op, step="cleaning", params={
                **(op.params or {}), "outcome": "failed", "fault": detail})
            self._main_clean(op)
            return
        pull_id = f"{op.request_id}-pull"
        ops = self.agents.ops(self.ctxt, op.dest_host).get("ops", [])
        pull = next((a for a in ops if a.get("request_id") == pull_id), None)
        if pull is None:
            self._finish(op, "done", f"{detail}; {op.dest_host} started no pull of "
                                     f"{op.main_host}'s pages", main_host=op.dest_host)
            return
        self.db.update(op, step="pulling", main_host=op.dest_host,
                       agent_op_id=str(pull["id"]), progress={"nova": detail})

    def _main_poll(self, op: Operation) -> None:
        if ((op.params or {}).get(RECORD) or {}).get("via"):
            self._backend_main_poll(op)
            return
        if op.state == "aborting" and op.id not in self._abort_sent and op.agent_op_id:
            try:
                self.agents.op_abort(self.ctxt, op.main_host, op.agent_op_id)
            except (exception.Conflict, exception.NotFound):
                pass                     # it ended meanwhile
            self._abort_sent.add(op.id)
        res = self._agent_status(op)
        p = op.params or {}
        if res is None:
            op = self.db.update(op, step="cleaning", params={
                **p, "outcome": "failed",
                "fault": AGENT_FORGOT.format(host=op.main_host, agent_op=op.agent_op_id)})
            self._main_clean(op)
            return
        state = str(res.get("state"))
        progress = _main_progress(res)
        if state == "running":
            if progress != (op.progress or {}):
                op = self.db.update(op, progress=progress)
                self.notify.progress(op)
            return
        if state == "done":
            op = self.db.update(op, step="committing", progress=progress)
            if op.state == "aborting":
                LOG.info("operation %s: the switch happened before the abort", op.id)
            self._main_commit(op)
            return
        op = self.db.update(op, step="cleaning", progress=progress, params={
            **p, "outcome": "aborted" if state == "aborted" else "failed",
            "fault": res.get("fault") or f"the libvirt step ended {state}"})
        self._main_clean(op)

    def _main_clean(self, op: Operation) -> None:
        """The move failed before the switch: the destination forgets the VM (it may
        refuse while its incoming QEMU still goes: the next pass asks again)."""
        p = op.params or {}
        note = ""
        try:
            self.agents.incoming_abort(self.ctxt, op.dest_host, vm=op.vm)
        except _CLEANUP_RETRY as exc:
            waited = (utcnow() - op.updated_at).total_seconds() if op.updated_at else 0.0
            if waited < self.cleanup_timeout:
                LOG.info("operation %s: %s: asked again next pass", op.id, describe(exc))
                return
            note = (f"; {op.dest_host} was not cleaned up in {self.cleanup_timeout:g} s "
                    f"({describe(exc)}): its agent forgets the incoming VM when it restarts")
        except Exception as exc:  # noqa: BLE001 - reported with the outcome
            LOG.warning("operation %s: incoming_abort on %s: %s", op.id, op.dest_host,
                        describe(exc))
        outcome = str(p.get("outcome", "failed"))
        self._finish(op, outcome if outcome in ("failed", "aborted") else "failed",
                     f"{p.get('fault')}; the VM goes on at {op.main_host}{note}")

    def _main_commit(self, op: Operation) -> None:
        p = op.params or {}
        pull_id = f"{op.request_id}-pull"
        try:
            res = self.agents.incoming_commit(self.ctxt, op.dest_host, vm=op.vm,
                                              then=str(p.get("then", "pull")),
                                              request_id=pull_id)
            pull = res.get("op")
        except exception.NotFound:
            # committed before a restart: the pull runs under its request id
            ops = self.agents.ops(self.ctxt, op.dest_host).get("ops", [])
            pull = next((a for a in ops if a.get("request_id") == pull_id), None)
            res = {}
        progress = dict(op.progress or {})
        progress.update({k: res[k] for k in ("resumed_at", "directory_ms", "remote_pages")
                         if k in res})
        stopped = (progress.get("migration") or {}).get("stopped_at")
        if stopped and res.get("resumed_at"):
            progress["downtime_ms"] = round((float(res["resumed_at"]) - float(stopped))
                                            * 1e3, 2)
        if pull is None:
            self._finish(op, "done", None, main_host=op.dest_host, progress=progress)
            return
        self.db.update(op, step="pulling", main_host=op.dest_host,
                       agent_op_id=str(pull["id"]), progress=progress)

    # split

    def _split(self, op: Operation) -> None:
        p = op.params or {}
        entries, _ = self.inventory.entries([str(op.main_host)])
        if any(e.get("path") == op.path or str(e.get("vm")) == op.vm for e in entries):
            self._finish(op, "done", None, progress={"split": "already split"})
            return
        try:
            res = self.agents.split(self.ctxt, op.main_host, path=op.path, vm=op.vm,
                                    sub_hosts=p["sub_host_endpoints"],
                                    resident_limit=int(p["resident_limit"]))
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001
            self._finish(op, "failed", f"the agent on {op.main_host} refused the split: "
                                       f"{describe(exc)}")
            return
        self._finish(op, "done", None, progress=dict(res or {}))

    # host drain

    def _plan_drain(self, op: Operation) -> None:
        host = str(op.source_host)
        exclude = set((op.params or {}).get("exclude", []))
        entries, unreachable = self.inventory.entries()
        parts = [Part.from_report(e) for e in entries]
        cands = [h for h in self.inventory.hosts if h != host and h not in exclude
                 and h not in unreachable]
        free = self.inventory.free_pages(cands, reserved_pages(self.db))
        plan = plan_drain(host, parts, free, exclude=exclude)
        if self.backend.schedules:
            # hosts whose agents do not answer could not take a part now
            plan = self._scheduled_plan(host, parts, exclude | set(unreachable), plan)
        try:
            self._drain_children(op, plan, unreachable)
        except Exception:
            for m in plan.moves:
                if isinstance(m, ScheduledMove):
                    self.backend.release(m.record)
            raise

    def _drain_children(self, op: Operation, plan: DrainPlan,
                        unreachable: dict[str, str]) -> None:
        children = []
        for m in plan.moves:
            child_id = m.op_id if isinstance(m, ScheduledMove) else str(uuid.uuid4())
            params: dict[str, Any] = {"pages": m.pages,
                                      "dest_endpoint": self.inventory.endpoint(m.dest)}
            if isinstance(m, ScheduledMove):
                params[RECORD] = m.record
            children.append({
                "id": child_id, "kind": "partial_migration", "parent_id": op.id,
                "vm": m.vm, "path": m.path, "main_host": m.main_host,
                "source_host": m.source, "dest_host": m.dest, "strategy": "ipmigrate",
                "params": params})
        progress = {"moves": [{"vm": m.vm, "source": m.source, "dest": m.dest,
                               "pages": m.pages} for m in plan.moves],
                    "main_host_vms": [p.vm for p in plan.main_host_vms],
                    "unplaced": [{"vm": p.vm, "why": why} for p, why in plan.unplaced],
                    "unreachable": unreachable, "plan": plan.summary()}
        self.db.create_many(children, update=(op, {"step": "waiting", "progress": progress}))
        LOG.info("%s", plan.summary())
        self.wake()

    def _scheduled_plan(self, host: str, parts: list[Part], exclude: set[str],
                        plan: DrainPlan) -> DrainPlan:
        """The drain's moves with destinations from the backend (one claim per
        part, in the plan's order); a part the backend finds no room for is
        unplaced. Claims made before a failure to persist are given back."""
        moves: list[ScheduledMove] = []
        unplaced: list[tuple[Part, str]] = []
        for p in parts:
            if p.main_host == host or p.pages_by_host.get(host, 0) <= 0:
                continue
            op_id = str(uuid.uuid4())
            holders = [h for h, n in p.pages_by_host.items() if n > 0 and h != p.main_host]
            try:
                rec = self.backend.claim_part(op_id, p.vm, p.main_host, host, None, holders,
                                              avoid=sorted(exclude))
            except TRANSIENT:
                for m in moves:
                    self.backend.release(m.record)
                raise
            except exception.IPMigrateException as exc:
                unplaced.append((p, describe(exc)))
                continue
            moves.append(ScheduledMove(vm=p.vm, path=p.path, main_host=p.main_host,
                                       source=host, dest=str(rec["dest"]),
                                       pages=p.pages_by_host[host], op_id=op_id,
                                       record=rec))
        return DrainPlan(host=host, moves=list(moves), main_host_vms=plan.main_host_vms,
                         unplaced=unplaced)

    def _drain_wait(self, op: Operation) -> None:
        children = self.db.list(parent_id=op.id)
        progress = dict(op.progress or {})
        totals = Counter[str]()
        for c in children:
            for k in ("pages_total", "pages_done", "bytes_total", "bytes_done"):
                totals[k] += int((c.progress or {}).get(k, 0))
        progress.update(totals, children={c.id: c.state for c in children})
        if not all(c.final for c in children):
            if progress != (op.progress or {}):
                op = self.db.update(op, progress=progress)
                self.notify.progress(op)
            return
        faults = [f"{c.vm}: part move {c.source_host} -> {c.dest_host} {c.state}: {c.fault}"
                  for c in children if c.state != "done"]
        faults += [f"{u['vm']}: part on {op.source_host} not placed: {u['why']}"
                   for u in progress.get("unplaced", [])]
        notes = [f"{vm}: {op.source_host} is its main host: needs the main-host move"
                 for vm in progress.get("main_host_vms", [])]
        self._finish(op, "failed" if faults else "done",
                     "; ".join(faults + notes) or None, progress=progress)

    def _abort_drain(self, op: Operation) -> None:
        children = self.db.list(parent_id=op.id)
        for c in children:
            if c.final:
                continue
            try:
                if c.state == "queued":
                    c = self._finish(c, "aborted", "the host drain was aborted")
                elif c.state == "running":
                    self.db.update(c, state="aborting")
            except StaleOperation:
                pass
        if all(c.final for c in self.db.list(parent_id=op.id)):
            self._finish(op, "aborted", "aborted by request")
        else:
            self.wake()


def _main_progress(res: dict[str, Any]) -> dict[str, Any]:
    """The progress of a main-host move's libvirt step, from the source's operation."""
    return {"phase": (res.get("details") or {}).get("phase"),
            "migration": dict(res.get("details") or {})}


def reserved_pages(db: Database) -> dict[str, int]:
    """Pages that active part moves will put on each destination."""
    out: Counter[str] = Counter()
    for op in db.list(states=("queued", "running", "aborting"), kinds=("partial_migration",)):
        if op.dest_host and op.dest_host != op.main_host:
            out[op.dest_host] += int((op.params or {}).get("pages", 0))
    return dict(out)


def _log_failure(fut: futures.Future[Any]) -> None:
    exc = fut.exception()
    if exc is not None:
        LOG.error("engine step failed: %s", exc, exc_info=exc)
