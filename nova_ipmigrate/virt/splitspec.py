"""What a flavor asks of a split-memory instance (``ipmigrate:*`` extra specs).

No Nova import here: the driver, the scheduler plug-ins, the API's extra-spec
validators and the engine all read a flavor through :func:`from_extra_specs`.

=========================  ===================================================
``ipmigrate:split_memory``  ``true``: the instance's RAM is split (default false)
``ipmigrate:sub_hosts``     how many sub-hosts hold the rest (1-16, default 1)
``ipmigrate:resident_mb``   the main host's part in MiB (default: half the RAM)
``ipmigrate:placement``     page-out placement policy over the sub-hosts
                            (``nova_ipmigrate.placement`` plug-in; default: the
                            agent's ``[agent] placement_policy``)
=========================  ===================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

PREFIX = "ipmigrate:"
SPLIT_MEMORY = PREFIX + "split_memory"
SUB_HOSTS = PREFIX + "sub_hosts"
RESIDENT_MB = PREFIX + "resident_mb"
PLACEMENT = PREFIX + "placement"
MAX_SUB_HOSTS = 16
#: the smallest main-host part (MiB): QEMU, firmware and the guest's hot set
MIN_RESIDENT_MB = 64

#: instance system_metadata key the engine sets while it moves a split instance
#: through Nova itself (its operation id); Nova's own moves are refused without it
OPERATION_KEY = "ipmigrate_operation"
#: scheduler hint of the engine's part requests (value: the operation id)
HINT_PART = "ipmigrate_part"
#: scheduler hint the engine puts on an instance's stored RequestSpec while Nova
#: live-migrates it for the engine's main-host move (value: the operation id)
HINT_OPERATION = OPERATION_KEY

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class InvalidSplitSpec(ValueError):
    """A flavor's ``ipmigrate:*`` extra specs are malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    memory_mb: int
    sub_hosts: int
    resident_mb: int
    placement: str | None = None

    @property
    def remote_mb(self) -> int:
        """MiB the sub-hosts hold together."""
        return self.memory_mb - self.resident_mb

    def part_sizes(self) -> list[int]:
        """MiB of each sub-host's part: the remote memory spread evenly (the first
        parts take the remainder)."""
        base, extra = divmod(self.remote_mb, self.sub_hosts)
        return [base + (1 if i < extra else 0) for i in range(self.sub_hosts)]


def parse_bool(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidSplitSpec(f"{key} must be true or false, not {value!r}")


def parse_int(key: str, value: Any, low: int, high: int | None = None) -> int:
    try:
        n = int(str(value).strip(), 10)
    except ValueError:
        raise InvalidSplitSpec(f"{key} must be an integer, not {value!r}") from None
    if n < low or (high is not None and n > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidSplitSpec(f"{key} must be {bounds}, not {n}")
    return n


def is_split(extra_specs: Mapping[str, Any] | None) -> bool:
    """Whether the flavor asks for a split-memory instance (a malformed value is
    refused: the API validates it, this is for flavors older than the plug-in)."""
    value = (extra_specs or {}).get(SPLIT_MEMORY)
    return value is not None and parse_bool(SPLIT_MEMORY, value)


def from_extra_specs(extra_specs: Mapping[str, Any] | None, memory_mb: int
                     ) -> SplitSpec | None:
    """The split asked for by a flavor of ``memory_mb`` MiB, or None when it asks
    for none; :class:`InvalidSplitSpec` says what is wrong."""
    specs = extra_specs or {}
    if not is_split(specs):
        return None
    subs = parse_int(SUB_HOSTS, specs.get(SUB_HOSTS, 1), 1, MAX_SUB_HOSTS)
    if RESIDENT_MB in specs:
        resident = parse_int(RESIDENT_MB, specs[RESIDENT_MB], MIN_RESIDENT_MB)
    else:
        resident = max(MIN_RESIDENT_MB, memory_mb // 2)
    if resident >= memory_mb:
        raise InvalidSplitSpec(f"{RESIDENT_MB} ({resident}) must be less than the "
                               f"flavor's RAM ({memory_mb} MiB): nothing would be split")
    if memory_mb - resident < subs:
        raise InvalidSplitSpec(f"{memory_mb - resident} MiB cannot be spread over "
                               f"{subs} sub-hosts")
    placement = specs.get(PLACEMENT)
    return SplitSpec(memory_mb=memory_mb, sub_hosts=subs, resident_mb=resident,
                     placement=str(placement) if placement else None)
