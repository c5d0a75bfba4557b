"""SplitMemoryFilter: nova-scheduler's guard for split-memory instances.

Enable it with ``[filter_scheduler] available_filters`` (add the line
``available_filters = nova_ipmigrate.scheduler.filters.SplitMemoryFilter``) and its
class name in ``enabled_filters``; see ``doc/nova-scheduler.md``.

The filter tells three kinds of request apart, from the ``RequestSpec`` alone:

1. **The engine's part requests** carry the scheduler hint ``ipmigrate_part``
   (:data:`nova_ipmigrate.scheduler.HINT_PART`). Their flavor is memory-only: the
   request's ``memory_mb`` is the part's size. A host passes when

   * its free memory, as nova-scheduler's ``HostState`` knows it, fits the part: the
     check Nova's ``RamFilter`` used to make (``free_ram_mb``, ``total_usable_ram_mb``
     and ``ram_allocation_ratio`` of ``HostState``, ``nova/scheduler/host_manager.py:111,
     114,147``, copied from the host's ``ComputeNode`` at 217-218 and 258, that is from
     its resource tracker). Placement already decided it: the
     hosts reaching a filter are allocation candidates for ``MEMORY_MB=<part>``
     (``nova/scheduler/manager.py:228-245``) and the scheduler claims the part there
     afterwards. The resource tracker counts the *whole* flavor of the instances it
     runs and nothing of the parts a sub-host holds (findings §2.1 item 4), so this
     check is coarser than placement's: it cannot let through a host that placement
     refused, it can only refuse a host whose tracker counts split instances at full
     size. It is skipped on the instance's own Nova host (``ipmigrate_instance`` in
     ``HostState.instances``), whose tracker already counts the instance's whole flavor
     and so the part being asked for (a reintegration there would be counted twice);
   * for purpose ``part`` (and for a missing or unknown purpose, as the safe reading),
     it is not one of ``ipmigrate_holders``: a new part goes to a host holding none of
     the instance.

   A disabled compute service is not checked here: it is already excluded for every
   request that is not a rebuild, by Nova's mandatory placement pre-filter
   ``compute_status_filter`` (forbidden trait ``COMPUTE_STATUS_DISABLED``,
   ``nova/scheduler/request_filter.py:247-260,612``, run by
   ``nova/scheduler/manager.py:228``) and by ``ComputeFilter``
   (``nova/scheduler/filters/compute_filter.py:35-47``: disabled *or down*; keep it in
   ``enabled_filters``, it is there by default). ``HostState.service`` is set only by
   ``HostState.update()`` (``host_manager.py:176``), not in ``HostState.__init__``.

2. **Nova's own moves of a split-memory instance** get no host at all (unless
   ``[ipmigrate_scheduler] refuse_nova_moves = false``): a stock move hands the whole
   flavor to one destination and drops or strands the parts the sub-hosts hold in
   placement (``conductor/tasks/migrate.py:29 replace_allocation_with_migration`` moves
   every allocation of the instance to the migration consumer; findings §2.1 item 3).
   A request is a move when, without the part hint, its flavor is split
   (``splitspec.is_split``) and either marker is present:

   * ``requested_destination.cell`` is set (to a ``CellMapping``, or to None). Every
     conductor path that moves an existing instance sets it before it calls the
     scheduler, and no boot path does:

     - live migration: ``nova/conductor/tasks/live_migrate.py:519-524``;
     - cold migration and resize: ``nova/conductor/tasks/migrate.py:167-190``
       (``cell = None`` for a targeted cross-cell resize, still set);
     - evacuation and unshelve: ``nova/conductor/manager.py:979-1002``
       ``_restrict_request_spec_to_cell``, called at 1347 (rebuild/evacuate) and 1106
       (unshelve);
     - a boot sets ``requested_destination`` only to ``Destination(host, node)``
       (``nova/compute/api.py:1432-1439``) and the scheduler's request filters add
       only aggregates (``nova/scheduler/request_filter.py:88-92,125-128,159-163,
       327-330``); ``requested_destination`` is never persisted
       (``nova/objects/request_spec.py:846-848``), so no later request inherits a cell;

   * ``ignore_hosts`` is not empty: live migration (``live_migrate.py:542``, the source
     and the hosts tried), evacuation (``conductor/manager.py:1312``), cold migration
     and resize without same-host resize (``nova/compute/api.py:4421-4427``). No boot
     path sets it (``nova/objects/request_spec.py:647`` takes it from the boot's
     filter properties, which have none) and it is never persisted either.

   ``Destination.allow_cross_cell_move`` is not a marker: it has a default, and
   ``Destination.obj_load_attr`` sets that default on first read, which nova-scheduler
   does for every request with a cell (``nova/scheduler/host_manager.py:771-776``).

   The unshelve of a shelved-offloaded instance is refused too: its spec (a cell, no
   ``ignore_hosts``) is the same as a resize's when ``allow_resize_to_same_host`` is
   set, and the scheduler cannot tell them apart. Shelve-offload deleted all the
   instance's allocations (``nova/compute/resource_tracker.py:1859-1862``), so letting
   it through would be safe in placement; with the filter it needs
   ``refuse_nova_moves = false`` or a boot path of the engine's own.

   Not seen by any filter: a live migration or an evacuation to a *forced* host
   (``force=True`` at microversions 2.29/2.30 to 2.67, or an evacuation with a host
   before 2.29) skips the scheduler
   (``live_migrate.py:101-131``, ``conductor/manager.py:1268-1275``); refusing those is
   the compute driver's job.

3. **Everything else passes**: an initial boot of a split-memory instance (it is
   scheduled for the whole flavor on its main host, like any boot) and every request
   for a flavor that is not split.

Rebuilds (``_nova_check_type == ['rebuild']``, set by ``nova/compute/api.py:3885-3891``
for a rebuild with a new image and tested by ``nova/scheduler/utils.py:1303-1313``) keep
the instance on its host and claim nothing (``scheduler/utils.py:1337``), so
``RUN_ON_REBUILD`` stays False: ``BaseHostFilter._filter_one``
(``nova/scheduler/filters/__init__.py:39-49``) passes every host of a rebuild without
calling :meth:`SplitMemoryFilter.host_passes`, and :meth:`SplitMemoryFilter.filter_all`
does the same. An evacuation is not a rebuild in that sense: it has no
``_nova_check_type`` and is refused as a move.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import nova.conf
from nova.scheduler import filters
from nova.scheduler import utils as scheduler_utils
from oslo_log import log as logging

from nova_ipmigrate import scheduler as hints
from nova_ipmigrate.scheduler import conf as scheduler_conf
from nova_ipmigrate.virt import splitspec

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF
scheduler_conf.register_opts(CONF)


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` if the versioned object has the field set (no lazy load), else None."""
    if obj is None or not obj.obj_attr_is_set(name):
        return None
    return getattr(obj, name)


def move_markers(spec_obj: Any) -> list[str]:
    """What says that ``spec_obj`` comes from one of Nova's moves of an existing
    instance (empty for a boot); see the module's documentation."""
    markers = []
    destination = _field(spec_obj, "requested_destination")
    if destination is not None and destination.obj_attr_is_set("cell"):
        cell = destination.cell
        cell_uuid = getattr(cell, "uuid", None) if cell is not None else None
        markers.append(f"requested_destination.cell={cell_uuid}")
    ignore_hosts = _field(spec_obj, "ignore_hosts")
    if ignore_hosts:
        markers.append(f"ignore_hosts={','.join(sorted(ignore_hosts))}")
    return markers


def flavor_split(spec_obj: Any) -> tuple[bool, str | None]:
    """(whether the request's flavor is split-memory, what is wrong with its
    ``ipmigrate:split_memory`` when it is malformed: then it counts as split)."""
    flavor = _field(spec_obj, "flavor")
    extra_specs = _field(flavor, "extra_specs")
    try:
        return splitspec.is_split(extra_specs), None
    except splitspec.InvalidSplitSpec as e:
        return True, str(e)


def refused_move(spec_obj: Any) -> str | None:
    """Why every host is refused to ``spec_obj`` (one of Nova's own moves of a
    split-memory instance), or None when the request is not refused as a whole."""
    if hints.is_part_request(spec_obj) or not CONF.ipmigrate_scheduler.refuse_nova_moves:
        return None
    if hints.hint_values(spec_obj, splitspec.HINT_OPERATION):
        return None   # the engine's own main-host move, run through Nova
    markers = move_markers(spec_obj)
    if not markers:
        return None
    split, malformed = flavor_split(spec_obj)
    if not split:
        return None
    flavor = _field(spec_obj, "flavor")
    name = _field(flavor, "name") or _field(flavor, "flavorid")
    if malformed is None:
        what = f"flavor {name} is split-memory ({splitspec.SPLIT_MEMORY})"
    else:
        what = (f"flavor {name} has a malformed {splitspec.SPLIT_MEMORY} ({malformed}), "
                "taken as split-memory")
    return (f"{what} and this is one of Nova's own moves of the instance (live or cold "
            f"migration, resize, evacuation or unshelve: {'; '.join(markers)}). Nova would "
            "move the whole flavor to one host and lose track of the memory parts held by "
            "sub-hosts; move split-memory instances with nova-ipmigrate instead")


def _holds_instance(host_state: Any, instance_uuid: str | None) -> bool:
    instances = getattr(host_state, "instances", None) or {}
    return instance_uuid is not None and instance_uuid in instances


def ram_fits(host_state: Any, requested_mb: int) -> tuple[bool, str]:
    """RamFilter's check: ``requested_mb`` fits the host's memory as its resource
    tracker reports it, with ``ram_allocation_ratio`` (1.0 when unknown)."""
    total = host_state.total_usable_ram_mb
    free = host_state.free_ram_mb
    ratio = host_state.ram_allocation_ratio
    if ratio is None:
        ratio = 1.0
    # A part may not overcommit against itself, only against other consumers.
    if total < requested_mb:
        return False, f"{requested_mb} MiB asked, the host has {total} MiB in all"
    usable = total * ratio - (total - free)
    if usable < requested_mb:
        return False, (f"{requested_mb} MiB asked, {usable:.0f} MiB usable (total {total} "
                       f"MiB, free {free} MiB, ram_allocation_ratio {ratio})")
    return True, ""


class SplitMemoryFilter(filters.BaseHostFilter):
    """Refuses Nova's own moves of split-memory instances; for the engine's part
    requests, passes hosts that fit the part and, for a new part, hold none of the
    instance yet. See the module's documentation for what it relies on."""

    # A rebuild keeps the instance where it is and claims nothing: nothing to guard.
    RUN_ON_REBUILD = False
    # The engine may ask for several parts in one request: hosts' free memory changes
    # between them (HostState.consume_from_request), so run for every instance.
    run_filter_once_per_request = False

    def filter_all(self, filter_obj_list: Iterable[Any], spec_obj: Any) -> Any:
        """Decides once per request (and instance) whether the request is refused as a
        whole, and logs that once; otherwise checks host by host."""
        if not self.RUN_ON_REBUILD and scheduler_utils.request_is_rebuild(spec_obj):
            return super().filter_all(filter_obj_list, spec_obj)
        reason = refused_move(spec_obj)
        if reason is not None:
            LOG.info("SplitMemoryFilter: no host for instance %(uuid)s: %(reason)s.",
                     {"uuid": _field(spec_obj, "instance_uuid"), "reason": reason})
            return []
        return super().filter_all(filter_obj_list, spec_obj)

    def host_passes(self, host_state: Any, spec_obj: Any) -> bool:
        if not hints.is_part_request(spec_obj):
            reason = refused_move(spec_obj)
            if reason is not None:
                LOG.debug("SplitMemoryFilter: %(host)s refused: %(reason)s",
                          {"host": host_state, "reason": reason})
                return False
            return True
        return self._part_host_passes(host_state, spec_obj)

    def _part_host_passes(self, host_state: Any, spec_obj: Any) -> bool:
        operation = hints.hint_value(spec_obj, hints.HINT_PART)
        purpose = hints.purpose(spec_obj)
        if purpose not in hints.HOLDER_PURPOSES:
            # "part", and the safe reading of a missing or unknown purpose
            if host_state.host in hints.holders(spec_obj):
                LOG.debug("SplitMemoryFilter: %(host)s refused for operation %(op)s "
                          "(purpose %(purpose)s): it already holds a part of instance "
                          "%(instance)s",
                          {"host": host_state, "op": operation, "purpose": purpose,
                           "instance": hints.hint_value(spec_obj, hints.HINT_INSTANCE)})
                return False
        instance_uuid = hints.hint_value(spec_obj, hints.HINT_INSTANCE)
        if _holds_instance(host_state, instance_uuid):
            # Its resource tracker counts the instance's whole flavor, the part included.
            return True
        fits, why = ram_fits(host_state, spec_obj.memory_mb)
        if not fits:
            LOG.debug("SplitMemoryFilter: %(host)s refused for operation %(op)s: %(why)s",
                      {"host": host_state, "op": operation, "why": why})
        return fits
