"""nova-scheduler plug-ins of nova-ipmigrate.

* :class:`nova_ipmigrate.scheduler.filters.SplitMemoryFilter` refuses Nova's own moves of
  split-memory instances and checks the hosts of the engine's part requests;
* :class:`nova_ipmigrate.scheduler.weighers.SplitMemoryWeigher` orders the hosts of the
  engine's part requests.

Nova loads them by class path from ``[filter_scheduler]`` (see ``doc/nova-scheduler.md``).

This package module imports no Nova: it names the scheduler hints the engine puts on its
own memory-only requests and reads them from a ``RequestSpec``. Nova keeps every hint
value as a list of strings (``RequestSpec.scheduler_hints`` is a
``DictOfListOfStringsField``); ``RequestSpec.get_scheduler_hint`` gives a lone value as a
string and several as the list, :func:`hint_values` turns both back into a list.
"""

from __future__ import annotations

from typing import Any

from nova_ipmigrate.virt.splitspec import HINT_PART

#: the engine's operation id: marks a request as one of the engine's part requests
HINT_PART = HINT_PART
#: uuid of the split instance whose memory the part belongs to
HINT_INSTANCE = "ipmigrate_instance"
#: compute hosts (service host names, as in ``ignore_hosts``) already holding parts of it
HINT_HOLDERS = "ipmigrate_holders"
#: what the engine asks a host for: one of :data:`PURPOSES`
HINT_PURPOSE = "ipmigrate_purpose"

#: a new part on a host that holds none of the instance yet
PURPOSE_PART = "part"
#: a part pulled back onto a host (the main host) that holds some of the instance
PURPOSE_REINTEGRATION = "reintegration"
#: the host QEMU and the resident part move to
PURPOSE_MAIN_HOST = "main_host"
PURPOSES = (PURPOSE_PART, PURPOSE_REINTEGRATION, PURPOSE_MAIN_HOST)
#: purposes for which a host already holding parts is the better choice
HOLDER_PURPOSES = (PURPOSE_REINTEGRATION, PURPOSE_MAIN_HOST)


def hint_values(spec_obj: Any, name: str) -> list[str]:
    """The values of scheduler hint ``name`` of ``spec_obj`` (empty when it has none)."""
    get = getattr(spec_obj, "get_scheduler_hint", None)
    if get is None:
        return []
    value = get(name)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    text = str(value)
    return [text] if text else []


def hint_value(spec_obj: Any, name: str) -> str | None:
    """The first value of scheduler hint ``name``, or None."""
    values = hint_values(spec_obj, name)
    return values[0] if values else None


def is_part_request(spec_obj: Any) -> bool:
    """Whether ``spec_obj`` is one of the engine's own part requests."""
    return bool(hint_values(spec_obj, HINT_PART))


def purpose(spec_obj: Any) -> str | None:
    """The purpose of an engine request as sent (None when the hint is missing)."""
    return hint_value(spec_obj, HINT_PURPOSE)


def holders(spec_obj: Any) -> frozenset[str]:
    """Hosts that already hold parts of the request's instance."""
    return frozenset(hint_values(spec_obj, HINT_HOLDERS))
