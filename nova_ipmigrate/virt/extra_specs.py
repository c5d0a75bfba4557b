"""Nova API validators of the ``ipmigrate:*`` flavor extra specs.

Loaded by nova-api from the ``nova.api.extra_spec_validators`` entry point
``ipmigrate`` (setup.cfg), like Nova's own ``nova/api/validation/extra_specs/*.py``:
``openstack flavor set --property ipmigrate:sub_hosts=0`` is then a 400, and so is
an unknown ``ipmigrate:`` key. Values are parsed by :mod:`.splitspec`, as the driver
and the engine parse them, so that the API accepts exactly what they do. What needs
the whole flavor (``resident_mb`` below the flavor's RAM) is checked at spawn.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from nova import exception
from nova.api.validation.extra_specs import base

from nova_ipmigrate.agent import placement
from nova_ipmigrate.virt import splitspec


class SplitSpecValidator(base.ExtraSpecValidator):
    """Nova's validator, with booleans as :func:`splitspec.parse_bool` reads them (Nova's
    own also takes ``t``, ``y``, ``f`` and ``n``, which the driver would refuse)."""

    def _validate_bool(self, value: Any) -> None:
        try:
            splitspec.parse_bool(self.name, value)
        except splitspec.InvalidSplitSpec as exc:
            raise exception.ValidationError(f"Validation failed; {exc}.") from None


def placement_policies() -> list[str]:
    """The names of the page-out placement plug-ins installed here."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=placement.NAMESPACE)})


def register() -> list[base.ExtraSpecValidator]:
    return [
        SplitSpecValidator(
            name=splitspec.SPLIT_MEMORY,
            description="Whether the instance is a split-memory instance: its RAM is a "
            "shared file on the nova-ipmigrate agent's memfs, and sub-hosts can hold "
            "part of it. Needs compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver.",
            value={"type": bool, "description": "true, false, yes, no, on, off, 1 or 0"},
        ),
        SplitSpecValidator(
            name=splitspec.SUB_HOSTS,
            description="How many sub-hosts hold the part of a split-memory instance's "
            "RAM that its main host does not keep resident (default 1).",
            value={"type": int, "min": 1, "max": splitspec.MAX_SUB_HOSTS},
        ),
        SplitSpecValidator(
            name=splitspec.RESIDENT_MB,
            description="MiB of a split-memory instance's RAM that its main host keeps "
            "resident (default: half of the flavor's RAM); less than the flavor's RAM.",
            value={"type": int, "min": splitspec.MIN_RESIDENT_MB},
        ),
        SplitSpecValidator(
            name=splitspec.PLACEMENT,
            description="The policy that places a split-memory instance's paged-out "
            "pages over its sub-hosts (a nova_ipmigrate.placement plug-in; default: "
            "the agent's [agent] placement_policy).",
            value={"type": str, "enum": placement_policies()},
        ),
    ]
