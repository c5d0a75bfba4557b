"""splitspec: what a flavor's ``ipmigrate:*`` extra specs ask for."""

from __future__ import annotations

import pytest

from nova_ipmigrate.virt import splitspec
from nova_ipmigrate.virt.splitspec import InvalidSplitSpec, SplitSpec, from_extra_specs


@pytest.mark.parametrize("specs", [None, {}, {"hw:cpu_policy": "dedicated"},
                                   {splitspec.SPLIT_MEMORY: "false"},
                                   {splitspec.SPLIT_MEMORY: " Off ", splitspec.SUB_HOSTS: "x"}])
def test_not_split(specs: dict[str, str] | None) -> None:
    assert from_extra_specs(specs, 2048) is None
    assert not splitspec.is_split(specs)


def test_defaults() -> None:
    spec = from_extra_specs({splitspec.SPLIT_MEMORY: "True"}, 2048)
    assert spec == SplitSpec(memory_mb=2048, sub_hosts=1, resident_mb=1024, placement=None)
    assert spec.remote_mb == 1024
    assert spec.part_sizes() == [1024]


def test_default_resident_is_at_least_the_minimum() -> None:
    spec = from_extra_specs({splitspec.SPLIT_MEMORY: "yes"}, 100)
    assert spec is not None and spec.resident_mb == splitspec.MIN_RESIDENT_MB


def test_everything_given() -> None:
    spec = from_extra_specs({splitspec.SPLIT_MEMORY: "1", splitspec.SUB_HOSTS: " 3 ",
                             splitspec.RESIDENT_MB: "512",
                             splitspec.PLACEMENT: "least_loaded"}, 4096)
    assert spec == SplitSpec(memory_mb=4096, sub_hosts=3, resident_mb=512,
                             placement="least_loaded")


@pytest.mark.parametrize(("memory", "subs", "resident", "parts"), [
    (4096, 3, 1024, [1024, 1024, 1024]),
    (1000, 3, 64, [312, 312, 312]),
    (1001, 3, 64, [313, 312, 312]),
    (1002, 4, 64, [235, 235, 234, 234]),
    (130, 16, 64, [5, 5] + [4] * 14),
])
def test_part_sizes_spread_the_remote_memory(memory: int, subs: int, resident: int,
                                             parts: list[int]) -> None:
    spec = SplitSpec(memory_mb=memory, sub_hosts=subs, resident_mb=resident)
    assert spec.part_sizes() == parts
    assert sum(spec.part_sizes()) == spec.remote_mb == memory - resident


@pytest.mark.parametrize(("specs", "memory", "message"), [
    ({splitspec.SPLIT_MEMORY: "maybe"}, 2048, "must be true or false"),
    ({splitspec.SUB_HOSTS: "0"}, 2048, r"must be 1\.\.16, not 0"),
    ({splitspec.SUB_HOSTS: "17"}, 2048, r"must be 1\.\.16, not 17"),
    ({splitspec.SUB_HOSTS: "1.5"}, 2048, "must be an integer"),
    ({splitspec.RESIDENT_MB: "32"}, 2048, ">= 64, not 32"),
    ({splitspec.RESIDENT_MB: "2048"}, 2048, "must be less than the flavor's RAM"),
    ({}, 64, "must be less than the flavor's RAM"),           # default resident = all
    ({splitspec.SUB_HOSTS: "16", splitspec.RESIDENT_MB: "64"}, 72, "cannot be spread"),
])
def test_errors(specs: dict[str, str], memory: int, message: str) -> None:
    with pytest.raises(InvalidSplitSpec, match=message):
        from_extra_specs({splitspec.SPLIT_MEMORY: "true", **specs}, memory)

