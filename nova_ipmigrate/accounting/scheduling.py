"""Destinations of parts chosen by Nova's scheduler.

A part request is a copy of the instance's RequestSpec (never saved) whose flavor
asks for the part's MEMORY_MB and nothing else (``resources:VCPU=0``,
``resources:DISK_GB=0``: Nova strips zero amounts), ``ignore_hosts`` the hosts the
part must not go to, and the scheduler hints of :mod:`nova_ipmigrate.virt.splitspec`
that ``SplitMemoryFilter``/``SplitMemoryWeigher`` read. The scheduler claims the
part's memory on the chosen host for a fresh *part consumer*; the engine folds it
into the instance consumer when the pages have moved (:mod:`.placement`).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from nova_ipmigrate import exception
from nova_ipmigrate.virt import splitspec

LOG = logging.getLogger(__name__)

HINT_INSTANCE = "ipmigrate_instance"
HINT_HOLDERS = "ipmigrate_holders"
HINT_PURPOSE = "ipmigrate_purpose"
PURPOSES = ("part", "reintegration", "main_host")


@dataclasses.dataclass(frozen=True)
class Claim:
    """MEMORY_MB the scheduler claimed on ``host`` for part consumer ``consumer``."""
    host: str
    rp: str
    consumer: str
    mb: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def part_request(spec: Any, mb: int, *, op_id: str, instance: str, purpose: str,
                 ignore_hosts: Iterable[str] = (), holders: Iterable[str] = (),
                 dest: str | None = None) -> Any:
    """A memory-only copy of ``spec`` (an ``objects.RequestSpec``) for ``mb`` MiB."""
    from nova import objects

    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r}")
    req = spec.obj_clone()
    flavor = req.flavor.obj_clone()
    # only the split's own keys: every other extra spec (and image property) can
    # turn into resources or traits (hw:cpu_policy -> PCPU, hw:pmem, accel:, ...)
    extra = {k: v for k, v in dict(flavor.extra_specs or {}).items()
             if k.startswith(splitspec.PREFIX)}
    extra.update({"resources:VCPU": "0", "resources:DISK_GB": "0"})
    flavor.memory_mb = int(mb)
    flavor.extra_specs = extra
    req.flavor = flavor
    req.image = objects.ImageMeta.from_dict({"properties": {}})
    req.num_instances = 1
    req.requested_resources = []   # not persisted, and None breaks the scheduler
    req.numa_topology = None
    req.pci_requests = objects.InstancePCIRequests(requests=[])
    req.ignore_hosts = sorted(set(ignore_hosts)) or None
    req.force_hosts = []
    req.force_nodes = []
    req.requested_destination = objects.Destination(host=dest) if dest else None
    req.scheduler_hints = {splitspec.HINT_PART: [op_id], HINT_INSTANCE: [instance],
                           HINT_HOLDERS: sorted(set(holders)), HINT_PURPOSE: [purpose]}
    return req


class Scheduler:
    """Asks Nova's scheduler; ``query``: a ``SchedulerQueryClient``."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def claim(self, ctxt: Any, instance: str, mb: int, *, op_id: str, purpose: str,
              ignore_hosts: Iterable[str] = (), holders: Iterable[str] = (),
              dest: str | None = None) -> Claim:
        """Claim ``mb`` MiB for a part of ``instance`` on ``dest`` or on a host the
        scheduler picks; InsufficientCapacity when no host fits."""
        from nova import exception as nova_exc
        from nova import objects

        try:
            spec = objects.RequestSpec.get_by_instance_uuid(ctxt, instance)
        except nova_exc.RequestSpecNotFound as exc:
            raise exception.NotFound(f"Nova knows no instance {instance}",
                                     reason=f"instance {instance}") from exc
        req = part_request(spec, mb, op_id=op_id, instance=instance, purpose=purpose,
                           ignore_hosts=ignore_hosts, holders=holders, dest=dest)
        consumer = str(uuid.uuid4())
        try:
            selections = self.query.select_destinations(
                ctxt, req, [consumer], return_objects=True, return_alternates=False)
        except nova_exc.NoValidHost as exc:
            where = f"on {dest}" if dest else "on any host"
            raise exception.InsufficientCapacity(
                f"Nova's scheduler found no room for {mb} MiB of instance {instance} "
                f"{where}: {exc.format_message()}", reason=dest or "no host") from exc
        sel = selections[0][0]
        LOG.info("scheduler: %d MiB of %s (%s, operation %s) on %s, part consumer %s",
                 mb, instance, purpose, op_id, sel.service_host, consumer)
        return Claim(host=str(sel.service_host), rp=str(sel.compute_node_uuid),
                     consumer=consumer, mb=int(mb))


class Providers:
    """Compute host <-> its compute-node resource provider (one node per host, as
    libvirt has), through Nova's host mappings and cell databases."""

    def __init__(self) -> None:
        self._rp: dict[str, str] = {}

    def rp(self, ctxt: Any, host: str) -> str:
        if host not in self._rp:
            from nova import context as nova_context
            from nova import exception as nova_exc
            from nova import objects

            try:
                mapping = objects.HostMapping.get_by_host(ctxt, host)
                with nova_context.target_cell(ctxt, mapping.cell_mapping) as cctxt:
                    nodes = objects.ComputeNodeList.get_all_by_host(cctxt, host)
            except (nova_exc.HostMappingNotFound, nova_exc.ComputeHostNotFound) as exc:
                raise exception.NotFound(f"Nova knows no compute host {host}",
                                         reason=f"host {host}") from exc
            if len(nodes) != 1:
                raise exception.Invalid(f"{host} has {len(nodes)} compute nodes: a split "
                                        f"instance's host has one", reason=host)
            self._rp[host] = str(nodes[0].uuid)
        return self._rp[host]

    def host(self, ctxt: Any, rp: str, hosts: Iterable[str]) -> str | None:
        for h in hosts:
            if self.rp(ctxt, h) == rp:
                return h
        return None
