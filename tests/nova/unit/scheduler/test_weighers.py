"""SplitMemoryWeigher through Nova's own weight handler: neutral without the part hint,
more free memory first for every part request, holders first for a reintegration or a
main-host move, the multiplier (option and aggregate metadata)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nova import objects
from nova.scheduler import weights as nova_weights
from nova.scheduler.weights import ram

from nova_ipmigrate import scheduler as hints
from nova_ipmigrate.scheduler import conf as scheduler_conf
from nova_ipmigrate.scheduler import weighers
from tests.nova.unit.scheduler import CONF, Flags, boot_spec, flavor, host, part_spec, persisted


@pytest.fixture
def flags() -> Iterator[Callable[..., None]]:
    f = Flags()
    yield f.set
    f.clear()


def weigh(spec: Any, host_states: list[Any],
          weigher_list: list[Any] | None = None) -> list[tuple[str, float]]:
    """(host, weight), best first, as Nova's HostWeightHandler gives them."""
    result = nova_weights.HostWeightHandler().get_weighed_objects(
        weigher_list or [weighers.SplitMemoryWeigher()], host_states, spec)
    return [(w.obj.host, w.weight) for w in result]


def order(spec: Any, host_states: list[Any]) -> list[str]:
    return [name for name, _ in weigh(spec, host_states)]


def instance_spec() -> Any:
    return persisted(boot_spec(flavor()))


def hosts_by_free() -> list[Any]:
    return [host("main", free_ram_mb=1024), host("subA", free_ram_mb=2048),
            host("subB", free_ram_mb=8192), host("subC", free_ram_mb=4096)]


def test_neutral_without_the_hint() -> None:
    spec = boot_spec(flavor())
    weighed = weigh(spec, hosts_by_free())
    assert {w for _, w in weighed} == {0.0}
    assert weighers.SplitMemoryWeigher()._weigh_object(host("subB"), spec) == 0.0


def test_neutral_leaves_nova_ordering_alone() -> None:
    spec = boot_spec(flavor())
    both = [ram.RAMWeigher(), weighers.SplitMemoryWeigher()]
    assert weigh(spec, hosts_by_free(), both) == weigh(spec, hosts_by_free(),
                                                       [ram.RAMWeigher()])


def test_part_prefers_more_free_memory() -> None:
    spec = part_spec(instance_spec(), holders=("main",))
    weighed = weigh(spec, hosts_by_free())
    assert [name for name, _ in weighed] == ["subB", "subC", "subA", "main"]
    assert weighed[0][1] == pytest.approx(1.0)
    assert weighed[-1][1] == pytest.approx(0.0)


def test_part_gives_holders_no_bonus() -> None:
    spec = part_spec(instance_spec(), holders=("main", "subA"), purpose=hints.PURPOSE_PART)
    assert order(spec, hosts_by_free()) == ["subB", "subC", "subA", "main"]


@pytest.mark.parametrize("purpose", [hints.PURPOSE_REINTEGRATION, hints.PURPOSE_MAIN_HOST])
def test_holders_first_for_reintegration_and_main_host(purpose: str) -> None:
    spec = part_spec(instance_spec(), holders=("main", "subA"), purpose=purpose)
    # main and subA have the least free memory, yet come first, more free one first
    assert order(spec, hosts_by_free()) == ["subA", "main", "subB", "subC"]


def test_holder_weight_zero_ignores_holders(flags: Any) -> None:
    flags("holder_weight", 0.0)
    spec = part_spec(instance_spec(), holders=("main", "subA"),
                     purpose=hints.PURPOSE_REINTEGRATION)
    assert order(spec, hosts_by_free()) == ["subB", "subC", "subA", "main"]


def test_holder_weight_below_one_trades_off_against_free_memory(flags: Any) -> None:
    flags("holder_weight", 0.5)
    spec = part_spec(instance_spec(), holders=("subA",), purpose=hints.PURPOSE_MAIN_HOST)
    # subA: 0.5 + 1/7; subC: 3/7; subB: 1.0
    assert order(spec, hosts_by_free()) == ["subB", "subA", "subC", "main"]


def test_equal_free_memory_is_neutral_for_a_part() -> None:
    spec = part_spec(instance_spec(), holders=("main",))
    weighed = weigh(spec, [host("subA"), host("subB"), host("subC")])
    assert {w for _, w in weighed} == {0.0}


def test_multiplier_option(flags: Any) -> None:
    flags("weight_multiplier", 3.0)
    spec = part_spec(instance_spec(), holders=("main",))
    weighed = weigh(spec, hosts_by_free())
    assert weighed[0] == ("subB", pytest.approx(3.0))
    flags("weight_multiplier", -1.0)
    assert order(spec, hosts_by_free()) == ["main", "subA", "subC", "subB"]


def test_multiplier_from_aggregate_metadata() -> None:
    aggregate = objects.Aggregate(id=1, name="agg", hosts=["subC"],
                                  metadata={weighers.AGGREGATE_MULTIPLIER_KEY: "10"})
    host_states = hosts_by_free()
    host_states[3].aggregates = [aggregate]  # subC
    spec = part_spec(instance_spec(), holders=("main",))
    weighed = weigh(spec, host_states)
    assert weighed[0][0] == "subC"
    assert weighers.SplitMemoryWeigher().weight_multiplier(host_states[3]) == 10.0
    assert weighers.SplitMemoryWeigher().weight_multiplier(host_states[0]) == 1.0


def test_options_are_registered_and_listed() -> None:
    assert CONF.ipmigrate_scheduler.weight_multiplier == 1.0
    assert CONF.ipmigrate_scheduler.holder_weight == 2.0
    assert CONF.ipmigrate_scheduler.refuse_nova_moves is True
    (group, opts), = scheduler_conf.list_opts()
    assert group.name == "ipmigrate_scheduler"
    assert {o.name for o in opts} == {"weight_multiplier", "holder_weight",
                                      "refuse_nova_moves"}
    assert all(o.help for o in opts)
    scheduler_conf.register_opts(CONF)  # registering again (filters and weighers) is fine


def test_loads_by_class_path_as_nova_conf_names_it() -> None:
    classes = nova_weights.HostWeightHandler().get_matching_classes([
        "nova.scheduler.weights.all_weighers",
        "nova_ipmigrate.scheduler.weighers.SplitMemoryWeigher"])
    assert weighers.SplitMemoryWeigher in classes
    assert ram.RAMWeigher in classes
