"""Unit tests of nova_ipmigrate.scheduler (the filter and the weigher) against Nova's
own RequestSpec, HostState and filter/weight handlers.

The helpers below build RequestSpecs with Nova's own code where it can run without a
database: a boot's spec with ``RequestSpec.from_components`` (as ``compute/api.py``
does), the stored spec through ``RequestSpec._get_update_primitives`` and
``_from_db_object`` (what ``get_by_instance_uuid`` gives a move), and the engine's part
request as its brief describes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nova.conf
from nova import context as nova_context
from nova import objects
from nova.scheduler import utils as scheduler_utils
from nova.tests.unit.scheduler import fakes
from oslo_utils.fixture import uuidsentinel as uuids

from nova_ipmigrate import scheduler as hints
from nova_ipmigrate.scheduler import conf as scheduler_conf

objects.register_all()
CONF = nova.conf.CONF
scheduler_conf.register_opts(CONF)

SPLIT_SPECS = {"ipmigrate:split_memory": "true", "ipmigrate:sub_hosts": "2",
               "hw:mem_page_size": "any"}


def ctx() -> Any:
    return nova_context.RequestContext(user_id="fake-user", project_id="fake-project",
                                      is_admin=False)


def flavor(split: bool = True, memory_mb: int = 8192, name: str | None = None,
           extra_specs: dict[str, str] | None = None, flavor_id: int = 1) -> Any:
    specs = dict(SPLIT_SPECS if split else {}) if extra_specs is None else extra_specs
    return objects.Flavor(
        id=flavor_id, flavorid=str(flavor_id), name=name or ("m1.split" if split else "m1.plain"),
        memory_mb=memory_mb, vcpus=2, root_gb=10, ephemeral_gb=0, swap=0,
        rxtx_factor=1.0, vcpu_weight=0, disabled=False, is_public=True,
        extra_specs=specs, projects=[])


def boot_spec(fl: Any, instance_uuid: str = uuids.instance,
              scheduler_hints: dict[str, Any] | None = None,
              requested_host: str | None = None, num_instances: int = 1) -> Any:
    """The spec nova-api builds for a boot (``compute/api.py:1432-1514``)."""
    context = ctx()
    filter_properties = scheduler_utils.build_filter_properties(
        scheduler_hints or {}, None, None, fl)
    spec = objects.RequestSpec.from_components(
        context, instance_uuid, {"properties": {}}, fl, None,
        objects.InstancePCIRequests(requests=[]), filter_properties, None, None)
    spec.is_bfv = False
    spec.num_instances = num_instances
    if requested_host:
        destination = objects.Destination()
        destination.host = requested_host
        destination.node = requested_host
        spec.requested_destination = destination
    return spec


def persisted(spec: Any) -> Any:
    """``spec`` stored and read back, as ``RequestSpec.get_by_instance_uuid`` gives it to
    a move (``objects/request_spec.py:724-760,825-867``): the per-request fields
    (``requested_destination``, ``ignore_hosts``, ``retry`` ...) are gone."""
    updates = spec._get_update_primitives()
    db_spec = {"id": 1, "instance_uuid": spec.instance_uuid, "spec": updates["spec"]}
    loaded = objects.RequestSpec._from_db_object(ctx(), objects.RequestSpec(), db_spec)
    loaded.obj_reset_changes()
    return loaded


def over_rpc(spec: Any) -> Any:
    """The copy nova-scheduler gets of ``spec`` (the conductor sends it over RPC)."""
    return objects.RequestSpec.obj_from_primitive(spec.obj_to_primitive())


def part_spec(instance_spec: Any, part_mb: int = 1024, purpose: str | None = hints.PURPOSE_PART,
              holders: Sequence[str] = ("main", "subA"), operation: str = uuids.operation,
              part_uuid: str = uuids.part) -> Any:
    """The engine's memory-only request for one part of the instance of
    ``instance_spec``: a copy of its RequestSpec with a memory-only flavor, the holders
    ignored, a fresh consumer uuid and the ``ipmigrate_*`` hints."""
    spec = instance_spec.obj_clone()
    fl = spec.flavor.obj_clone()
    fl.memory_mb = part_mb
    fl.extra_specs = {"resources:VCPU": "0", "resources:DISK_GB": "0"}
    spec.flavor = fl
    spec.ignore_hosts = list(holders)
    spec.requested_resources = []
    spec.num_instances = 1
    spec.instance_uuid = part_uuid
    scheduler_hints = dict(spec.scheduler_hints or {})
    scheduler_hints.update({
        hints.HINT_PART: [operation],
        hints.HINT_INSTANCE: [instance_spec.instance_uuid],
        hints.HINT_HOLDERS: list(holders),
    })
    if purpose is not None:
        scheduler_hints[hints.HINT_PURPOSE] = [purpose]
    spec.scheduler_hints = scheduler_hints
    return spec


def host(name: str, free_ram_mb: int = 16384, total_usable_ram_mb: int = 16384,
         ram_allocation_ratio: float | None = 1.0, instances: Sequence[Any] = (),
         **attrs: Any) -> Any:
    values = {"free_ram_mb": free_ram_mb, "total_usable_ram_mb": total_usable_ram_mb,
              "ram_allocation_ratio": ram_allocation_ratio}
    values.update(attrs)
    return fakes.FakeHostState(name, name, values, instances=list(instances) or None)


class Flags:
    """Option overrides for one test: ``set(name, value, group=...)``, then ``clear()``."""

    def __init__(self) -> None:
        self._done: list[tuple[str, str]] = []

    def set(self, name: str, value: Any, group: str = scheduler_conf.GROUP_NAME) -> None:
        CONF.set_override(name, value, group=group)
        self._done.append((name, group))

    def clear(self) -> None:
        for name, group in reversed(self._done):
            CONF.clear_override(name, group=group)
        self._done.clear()
