"""SplitMemoryWeigher: orders the hosts of nova-ipmigrate's own part requests.

Enable it by adding ``nova_ipmigrate.scheduler.weighers.SplitMemoryWeigher`` to
``[filter_scheduler] weight_classes`` (see ``doc/nova-scheduler.md``).

Only requests with the ``ipmigrate_part`` hint are weighed; every other request gets 0
from this weigher for every host, which leaves Nova's ordering as it is. A hinted
request's host weighs

    holder_weight * (1 if the purpose is "reintegration" or "main_host" and the host is
                     one of ``ipmigrate_holders``, else 0)
    + its free memory, scaled to 0..1 over the hosts being weighed

then, like every Nova weigher, the list is normalised and multiplied by
``[ipmigrate_scheduler] weight_multiplier`` (or the aggregate metadata
``ipmigrate_weight_multiplier``). A holder already has some of the instance's memory, so
less of it moves. For purpose "part" holders never reach the weigher
(:class:`~nova_ipmigrate.scheduler.filters.SplitMemoryFilter` refuses them).

Free memory is ``HostState.free_ram_mb``, the resource tracker's view, as Nova's
``RAMWeigher`` uses it: it counts split instances at their whole flavor on their main
host and their parts nowhere (findings §2.1 item 4), so it is an ordering hint, not an
exact figure; placement has already checked that the part fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nova.conf
from nova.scheduler import utils as scheduler_utils
from nova.scheduler import weights

from nova_ipmigrate import scheduler as hints
from nova_ipmigrate.scheduler import conf as scheduler_conf

CONF = nova.conf.CONF
scheduler_conf.register_opts(CONF)

#: aggregate metadata key overriding ``[ipmigrate_scheduler] weight_multiplier``
AGGREGATE_MULTIPLIER_KEY = "ipmigrate_weight_multiplier"


def _free_terms(host_states: Sequence[Any]) -> list[float]:
    """Each host's free memory scaled to 0..1 over ``host_states`` (all 0 when equal)."""
    free = [float(h.free_ram_mb) for h in host_states]
    if not free:
        return []
    low, high = min(free), max(free)
    if high == low:
        return [0.0] * len(free)
    return [(f - low) / (high - low) for f in free]


class SplitMemoryWeigher(weights.BaseHostWeigher):
    """Prefers, for the engine's part requests, hosts with more free memory and, for a
    reintegration or a main-host move, hosts that already hold parts of the instance;
    neutral for every other request."""

    minval = 0.0

    def weight_multiplier(self, host_state: Any) -> float:
        return float(scheduler_utils.get_weight_multiplier(
            host_state, AGGREGATE_MULTIPLIER_KEY,
            CONF.ipmigrate_scheduler.weight_multiplier))

    def _holder_term(self, host_state: Any, spec_obj: Any) -> float:
        if hints.purpose(spec_obj) not in hints.HOLDER_PURPOSES:
            return 0.0
        if host_state.host not in hints.holders(spec_obj):
            return 0.0
        return float(CONF.ipmigrate_scheduler.holder_weight)

    def _weigh_object(self, host_state: Any, weight_properties: Any) -> float:
        """The holder term of one host (the free-memory term needs every host:
        :meth:`weigh_objects` adds it)."""
        if not hints.is_part_request(weight_properties):
            return 0.0
        return self._holder_term(host_state, weight_properties)

    def weigh_objects(self, weighed_obj_list: Sequence[Any],
                      weight_properties: Any) -> list[float]:
        if not hints.is_part_request(weight_properties):
            return [0.0] * len(weighed_obj_list)
        host_states = [w.obj for w in weighed_obj_list]
        return [self._holder_term(h, weight_properties) + free
                for h, free in zip(host_states, _free_terms(host_states), strict=True)]
