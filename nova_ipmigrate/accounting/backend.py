"""The engine's Nova backend: Nova's scheduler picks destinations, placement
accounts every part (``[engine] backend = nova``).

An operation's record (``params["accounting"]``) says which MEMORY_MB moves between
providers of the instance consumer when it succeeds (``moves``) and which part
consumers hold the destinations' memory meanwhile (``claims``). ``settle``: done ->
one atomic POST moves the memory and empties the claims; failed or aborted -> the
claims are deleted and the instance's allocations stay as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from nova_ipmigrate import exception
from nova_ipmigrate.accounting.placement import Ledger, Move, memory_on
from nova_ipmigrate.accounting.scheduling import Claim, Providers, Scheduler
from nova_ipmigrate.engine.backend import RECORD, Backend
from nova_ipmigrate.virt import splitspec

LOG = logging.getLogger(__name__)
MIB = 1 << 20


class NovaBackend(Backend):
    name = "nova"
    schedules = True

    def __init__(self, ctxt: Callable[[], Any], scheduler: Scheduler, ledger: Ledger,
                 providers: Providers) -> None:
        self.ctxt = ctxt
        self.scheduler = scheduler
        self.ledger = ledger
        self.providers = providers

    @classmethod
    def from_nova(cls) -> NovaBackend:
        """The backend on Nova's own clients (the process has read nova.conf)."""
        from nova import context as nova_context
        from nova.scheduler.client import query, report

        return cls(nova_context.get_admin_context,
                   Scheduler(query.SchedulerQueryClient()),
                   Ledger(report.report_client_singleton()), Providers())

    # -- claims ---------------------------------------------------------------------

    def _memory(self, ctxt: Any, vm: str, host: str) -> tuple[str, int]:
        rp = self.providers.rp(ctxt, host)
        return rp, memory_on(self.ledger.allocations(ctxt, vm), rp)

    @staticmethod
    def _record(vm: str, claims: Sequence[Claim], moves: Sequence[Move],
                **extra: Any) -> dict[str, Any]:
        return {"backend": "nova", "instance": vm, "claims": [c.consumer for c in claims],
                "moves": [m.to_list() for m in moves],
                "claimed": [c.to_dict() for c in claims], **extra}

    def claim_part(self, op_id: str, vm: str, main: str, source: str,
                   dest: str | None, holders: Sequence[str],
                   avoid: Sequence[str] = ()) -> dict[str, Any]:
        ctxt = self.ctxt()
        src_rp, mb = self._memory(ctxt, vm, source)
        if mb <= 0:
            raise exception.Invalid(
                f"placement holds no memory of instance {vm} on {source} although its "
                f"agents say {source} holds a part: the accounting drifted (see the "
                f"engine's reconcile)", reason=f"no allocation on {source}")
        to_main = dest == main
        ignore = [source] if dest else sorted({source, main, *holders, *avoid})
        claim = self.scheduler.claim(ctxt, vm, mb, op_id=op_id,
                                     purpose="reintegration" if to_main else "part",
                                     ignore_hosts=ignore, holders=holders, dest=dest)
        return self._record(vm, [claim], [Move(src_rp, claim.rp, mb)], dest=claim.host)

    def claim_reintegration(self, op_id: str, vm: str, main: str,
                            sources: Sequence[str]) -> dict[str, Any]:
        ctxt = self.ctxt()
        allocs = self.ledger.allocations(ctxt, vm)
        parts = []
        for s in sources:
            rp = self.providers.rp(ctxt, s)
            if memory_on(allocs, rp) > 0:
                parts.append((rp, memory_on(allocs, rp)))
        total = sum(mb for _, mb in parts)
        if total <= 0:
            raise exception.Invalid(f"placement holds no memory of instance {vm} on "
                                    f"{', '.join(sources)}: the accounting drifted",
                                    reason="no allocation on the sources")
        claim = self.scheduler.claim(ctxt, vm, total, op_id=op_id, purpose="reintegration",
                                     holders=sources, dest=main)
        return self._record(vm, [claim], [Move(rp, claim.rp, mb) for rp, mb in parts])

    def claim_split(self, op_id: str, vm: str, main: str, sub_hosts: Sequence[str],
                    resident_limit: int | None) -> dict[str, Any]:
        from nova import objects

        ctxt = self.ctxt()
        spec = objects.RequestSpec.get_by_instance_uuid(ctxt, vm)
        flavor = spec.flavor
        try:
            split = splitspec.from_extra_specs(flavor.extra_specs, flavor.memory_mb)
        except splitspec.InvalidSplitSpec as exc:
            raise exception.Invalid(f"flavor {flavor.name}: {exc}", reason=str(exc)) from exc
        if split is None:
            raise exception.Invalid(f"instance {vm} has flavor {flavor.name}, which is not "
                                    f"a split-memory flavor ({splitspec.SPLIT_MEMORY})",
                                    reason="not a split-memory flavor")
        if sub_hosts and len(sub_hosts) != split.sub_hosts:
            raise exception.Invalid(f"flavor {flavor.name} asks for {split.sub_hosts} "
                                    f"sub-hosts, not {len(sub_hosts)}", reason="sub_hosts")
        if resident_limit is not None and resident_limit != split.resident_mb * MIB:
            raise exception.Invalid(f"flavor {flavor.name} keeps {split.resident_mb} MiB "
                                    f"on the main host: resident_limit must be "
                                    f"{split.resident_mb * MIB} or left out",
                                    reason="resident_limit")
        main_rp, held = self._memory(ctxt, vm, main)
        if held != split.memory_mb:
            raise exception.Invalid(f"placement holds {held} MiB of instance {vm} on "
                                    f"{main}, not its {split.memory_mb} MiB: split already?",
                                    reason="already split")
        claims: list[Claim] = []
        try:
            for i, mb in enumerate(split.part_sizes()):
                claims.append(self.scheduler.claim(
                    ctxt, vm, mb, op_id=op_id, purpose="part",
                    ignore_hosts=[main, *(c.host for c in claims)],
                    holders=[c.host for c in claims],
                    dest=sub_hosts[i] if sub_hosts else None))
        except Exception:
            self.ledger.release(ctxt, [c.consumer for c in claims])
            raise
        return self._record(vm, claims, [Move(main_rp, c.rp, c.mb) for c in claims],
                            sub_hosts=[c.host for c in claims],
                            resident_limit=split.resident_mb * MIB)

    moves_main_host = True

    def claim_main_move(self, op_id: str, vm: str, main: str, dest: str | None,
                        holders: Sequence[str]) -> dict[str, Any]:
        """A main-host move runs as Nova's live migration, whose own scheduling
        claims the destination: nothing is claimed here. Without a destination the
        scheduler picks one for the resident part (that claim is given back at once:
        Nova's claims it again for the move)."""
        ctxt = self.ctxt()
        if dest is None:
            _, resident = self._memory(ctxt, vm, main)
            claim = self.scheduler.claim(ctxt, vm, max(resident, 1), op_id=op_id,
                                         purpose="main_host",
                                         ignore_hosts=sorted({main, *holders}),
                                         holders=holders)
            self.ledger.release(ctxt, [claim.consumer])
            dest = claim.host
        return {"backend": "nova", "instance": vm, "via": "nova", "dest": dest,
                "claims": [], "moves": []}

    def _instance(self, ctxt: Any, vm: str) -> Any:
        from nova.compute import api as compute_api

        return compute_api.API().get(ctxt, vm, expected_attrs=["system_metadata",
                                                                 "flavor"])

    def _mark(self, ctxt: Any, vm: str, op_id: str | None) -> None:
        """Mark (or unmark) the instance and its RequestSpec for the engine's move."""
        from nova import objects

        inst = self._instance(ctxt, vm)
        if op_id:
            inst.system_metadata[splitspec.OPERATION_KEY] = op_id
        else:
            inst.system_metadata.pop(splitspec.OPERATION_KEY, None)
        inst.save()
        spec = objects.RequestSpec.get_by_instance_uuid(ctxt, vm)
        hints = dict(spec.scheduler_hints or {})
        if op_id:
            hints[splitspec.HINT_OPERATION] = [op_id]
        else:
            hints.pop(splitspec.HINT_OPERATION, None)
        spec.scheduler_hints = hints
        spec.save()

    def start_main_move(self, op: Any) -> None:
        from nova import exception as nova_exc
        from nova.compute import api as compute_api

        ctxt = self.ctxt()
        if self._migration(ctxt, op) is not None:
            return      # started before an engine restart
        self._mark(ctxt, op.vm, op.request_id)
        inst = self._instance(ctxt, op.vm)
        try:
            compute_api.API().live_migrate(ctxt, inst, False, None, op.dest_host,
                                           force=False, async_=True)
        except nova_exc.NovaException as exc:
            if self._migration(ctxt, op) is None:
                self._mark(ctxt, op.vm, None)
                raise exception.Invalid(f"Nova refused the live migration of {op.vm} to "
                                        f"{op.dest_host}: {exc.format_message()}",
                                        reason="live migration refused") from exc
            # under Nova's test fixtures the conductor's failure comes back here;
            # the migration record says how it ended

    def _migration(self, ctxt: Any, op: Any) -> Any:
        """Nova's newest live-migration record of the instance since ``op`` started."""
        from nova import context as nova_context
        from nova import objects

        mapping = objects.InstanceMapping.get_by_instance_uuid(ctxt, op.vm)
        with nova_context.target_cell(ctxt, mapping.cell_mapping) as cctxt:
            migs = objects.MigrationList.get_by_filters(
                cctxt, {"instance_uuid": op.vm, "migration_type": "live-migration"})
        since = op.started_at
        found = [m for m in migs if since is None or
                 m.created_at.replace(tzinfo=None) >= since.replace(tzinfo=None)]
        return max(found, key=lambda m: m.created_at) if found else None

    def main_move_status(self, op: Any) -> tuple[str, str]:
        mig = self._migration(self.ctxt(), op)
        if mig is None:
            return "unknown", "no live-migration record yet"
        if mig.status == "completed":
            return "completed", f"migration {mig.uuid} completed"
        if mig.status in ("error", "failed", "cancelled"):
            return "failed", f"Nova's live migration {mig.uuid} ended {mig.status}"
        return "running", f"migration {mig.uuid} {mig.status}"

    # -- settling -------------------------------------------------------------------

    def settle(self, op: Any, state: str) -> None:
        rec = (op.params or {}).get(RECORD)
        if not rec:
            return
        ctxt = self.ctxt()
        if rec.get("via") == "nova":   # a main-host move: Nova's own books
            self._mark(ctxt, str(rec["instance"]), None)
            return
        if state == "done":
            if self.ledger.fold(ctxt, rec["instance"],
                                [Move.from_list(m) for m in rec["moves"]], rec["claims"]):
                LOG.info("operation %s: placement follows its moves", op.id)
        else:
            self.ledger.release(ctxt, rec["claims"])
            LOG.info("operation %s %s: its claims were given back", op.id, state)

    def release(self, record: dict[str, Any] | None) -> None:
        if record:
            self.ledger.release(self.ctxt(), record["claims"])
