"""Unit tests of nova_ipmigrate.accounting (the engine's Nova backend): placement
writes against a fake placement client, part requests on Nova's own RequestSpec,
maintenance notifications on oslo.messaging's fake transport."""

from __future__ import annotations

from typing import Any

from nova import context as nova_context
from nova import objects
from nova.scheduler import utils as scheduler_utils
from oslo_utils.fixture import uuidsentinel as uuids

objects.register_all()

SPLIT = {"ipmigrate:split_memory": "true", "ipmigrate:sub_hosts": "2",
         "ipmigrate:resident_mb": "1024"}


def ctx() -> Any:
    return nova_context.RequestContext(user_id="fake-user", project_id="fake-project",
                                      is_admin=False)


def flavor(extra_specs: dict[str, str] | None = None, memory_mb: int = 4096,
           name: str = "m1.split") -> Any:
    return objects.Flavor(
        id=1, flavorid="1", name=name, memory_mb=memory_mb, vcpus=2, root_gb=10,
        ephemeral_gb=1, swap=512, rxtx_factor=1.0, vcpu_weight=0, disabled=False,
        is_public=True, extra_specs=dict(SPLIT if extra_specs is None else extra_specs),
        projects=[])


def request_spec(fl: Any, instance_uuid: str = uuids.instance,
                 hints: dict[str, Any] | None = None) -> Any:
    """A boot's RequestSpec, as nova-api builds it (``RequestSpec.from_components``)."""
    filter_properties = scheduler_utils.build_filter_properties(hints or {}, None, None, fl)
    spec = objects.RequestSpec.from_components(
        ctx(), instance_uuid, {"properties": {}}, fl, None,
        objects.InstancePCIRequests(requests=[]), filter_properties, None, None)
    spec.is_bfv = False
    return spec
