"""The main-host move of a split-memory instance as a Nova live migration.

The engine starts it (``[engine] backend = nova``): it marks the instance
(``system_metadata[OPERATION_KEY]`` and a scheduler hint on its RequestSpec, so
the driver's guards and ``SplitMemoryFilter`` let this one move through) and asks
Nova to live-migrate it to the new main host D. Nova's conductor, scheduler and
computes then run their usual steps; the driver adds the data plane at four of
them (M: the old main host):

==========================================  =========================================
``pre_live_migration`` at D                  D's agent expects the VM
                                             (``incoming_prepare``)
``live_migration`` at M                      M's agent freezes the RAM file and sets
                                             ``x-ignore-shared`` on QEMU
                                             (``main_prepare_source``); Nova's own
                                             libvirt migration then moves only device
                                             and vCPU state
``post_live_migration`` at M                 M's agent commits its side; placement:
                                             the sub-hosts' parts go back to the
                                             instance consumer and D keeps only the
                                             resident part (:func:`fix_allocations`)
``post_live_migration_at_destination`` at D  D's agent pulls M's resident pages
                                             (``incoming_commit``, request id
                                             ``<operation>-pull``, polled by the engine)
rollbacks                                    M's agent rolls its side back; D's forgets
                                             the VM (``incoming_abort``)
==========================================  =========================================

Nova's scheduler claims the whole flavor on D for the move (its RequestSpec is the
instance's), so D needs room for all of it until :func:`fix_allocations` gives the
sub-hosts' share back; the conductor moves *all* the instance's allocations to the
migration consumer meanwhile, sub-host parts included, which is why the parts are
folded back before the source compute deletes that consumer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

from nova_ipmigrate.virt import splitspec

LOG = logging.getLogger(__name__)
MIB = 1 << 20


def operation_of(instance: Any) -> str | None:
    """The engine operation moving this instance through Nova, if any."""
    sysmeta = getattr(instance, "system_metadata", None) or {}
    op = sysmeta.get(splitspec.OPERATION_KEY)
    return str(op) if op else None


def spec_of(instance: Any) -> splitspec.SplitSpec | None:
    return splitspec.from_extra_specs(instance.flavor.extra_specs, instance.flavor.memory_mb)


def fix_allocations(ledger: Any, ctxt: Any, instance: str, migration: str,
                    source_rp: str, dest_rp: str) -> bool:
    """After Nova's live migration of a split instance, before the source compute
    deletes the migration consumer: one POST gives the instance consumer back the
    sub-hosts' parts the conductor moved to the migration consumer, and trims D's
    MEMORY_MB (Nova's scheduler claimed the whole flavor there) to the resident part
    M held. False when there was nothing to do (done already)."""
    from nova_ipmigrate.accounting.placement import MEMORY_MB

    for _ in range(4):
        inst = ledger.consumer(ctxt, instance)
        mig = ledger.consumer(ctxt, migration)
        held = dict(mig["allocations"])
        parts = {rp: dict(r) for rp, r in held.items() if rp != source_rp}
        if not parts:
            return False
        new = {rp: dict(r) for rp, r in inst["allocations"].items()}
        resident = held.get(source_rp, {}).get(MEMORY_MB)
        if dest_rp in new and resident is not None:
            new[dest_rp][MEMORY_MB] = resident
        for rp, r in parts.items():
            for rc, n in r.items():
                new.setdefault(rp, {})[rc] = new.get(rp, {}).get(rc, 0) + n
        body = {
            instance: {"allocations": {rp: {"resources": r} for rp, r in new.items()},
                       "project_id": inst["project_id"], "user_id": inst["user_id"],
                       "consumer_generation": inst["consumer_generation"]},
            migration: {"allocations": {source_rp: {"resources": held[source_rp]}}
                        if source_rp in held else {},
                        "project_id": mig["project_id"], "user_id": mig["user_id"],
                        "consumer_generation": mig["consumer_generation"]},
        }
        if ledger.post(ctxt, body):
            LOG.info("placement: instance %s keeps its sub-host parts after its main-host "
                     "move (%s)", instance, ", ".join(sorted(parts)))
            return True
    raise RuntimeError(f"placement: the allocations of instance {instance} kept changing")


class MainMoveHooks:
    """The data plane of a main-host move, called from the driver's live-migration
    methods (``agents``: an AgentAPI; ``host``: this compute host)."""

    def __init__(self, agents: Callable[[], Any], host: str,
                 ledger: Callable[[], Any], retry_s: float = 30.0) -> None:
        self._agents = agents
        self.host = host
        self._ledger = ledger
        self.retry_s = retry_s

    @property
    def agents(self) -> Any:
        return self._agents()

    def pre_live_migration(self, instance: Any) -> None:
        """At D: D's agent expects the VM from M."""
        spec = spec_of(instance)
        if spec is None or not operation_of(instance):
            return
        source = self.agents.endpoint({}, instance.host)
        self.agents.incoming_prepare({}, self.host, vm=instance.uuid,
                                     size=spec.memory_mb * MIB,
                                     resident_limit=spec.resident_mb * MIB, source=source)
        LOG.info("main-host move of %s from %s: expected here", instance.uuid,
                 instance.host, instance=instance)

    def prepare_source(self, instance: Any, dest: str) -> bool:
        """At M, before Nova's libvirt migration starts: M's side of the move."""
        if spec_of(instance) is None or not operation_of(instance):
            return False
        self.agents.main_prepare_source({}, self.host, vm=instance.uuid,
                                        dest=self.agents.endpoint({}, dest))
        return True

    def finish_source(self, instance: Any, ok: bool) -> None:
        try:
            self.agents.main_finish_source({}, self.host, vm=instance.uuid, ok=ok)
        except Exception as exc:  # noqa: BLE001 - Nova's own path goes on
            LOG.error("main-host move of %s: the agent did not %s its side: %s",
                      instance.uuid, "commit" if ok else "roll back", exc,
                      instance=instance)

    def post_live_migration(self, ctxt: Any, instance: Any, migrate_data: Any) -> None:
        """At M, after the switchover, before the migration consumer is deleted."""
        if spec_of(instance) is None or not operation_of(instance):
            return
        migration = getattr(migrate_data, "migration", None)
        if migration is None:
            LOG.error("main-host move of %s: Nova passed no migration record: the "
                      "sub-hosts' allocations are not restored", instance.uuid)
            return
        from nova import objects

        src = objects.ComputeNode.get_by_host_and_nodename(
            ctxt, migration.source_compute, migration.source_node)
        dst = objects.ComputeNode.get_by_host_and_nodename(
            ctxt, migration.dest_compute, migration.dest_node)
        fix_allocations(self._ledger(), ctxt, instance.uuid, migration.uuid, src.uuid,
                        dst.uuid)

    def post_at_destination(self, instance: Any) -> None:
        """At D, the VM runs here: pull M's resident pages."""
        op = operation_of(instance)
        if spec_of(instance) is None or not op:
            return
        self.agents.incoming_commit({}, self.host, vm=instance.uuid, then="pull",
                                    request_id=f"{op}-pull")

    def rollback_at_destination(self, instance: Any) -> None:
        if spec_of(instance) is None or not operation_of(instance):
            return
        from nova_ipmigrate import exception as ipm_exc

        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                self.agents.incoming_abort({}, self.host, vm=instance.uuid)
                return
            except ipm_exc.Conflict:   # its incoming QEMU is still going
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
