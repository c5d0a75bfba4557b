"""SplitMemoryFilter: boots pass, Nova's own moves of split-memory instances get no host,
the engine's part requests get hosts that fit the part and hold none of the instance.

The moves' RequestSpecs are built by Nova's own code where it runs without services:
the live migration by ``LiveMigrationTask._find_destination``, the cold migration and
the resize by ``MigrationTask._execute`` (both stopped at their call to
``select_destinations``, whose spec is what the filter gets), evacuation, unshelve and
rebuild by ``ComputeTaskManager._restrict_request_spec_to_cell`` plus the few lines of
``conductor/manager.py`` and ``compute/api.py`` around it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from nova import objects
from nova.conductor import manager as conductor_manager
from nova.conductor.tasks import live_migrate, migrate
from nova.scheduler import filters as nova_filters
from nova.tests.unit import fake_instance
from oslo_utils.fixture import uuidsentinel as uuids

from nova_ipmigrate import scheduler as hints
from nova_ipmigrate.scheduler import filters
from tests.nova.unit.scheduler import (
    Flags,
    boot_spec,
    ctx,
    flavor,
    host,
    over_rpc,
    part_spec,
    persisted,
)

CELL = objects.CellMapping(uuid=uuids.cell1, name="cell1",
                           transport_url="fake://", database_connection="fake://")
LOGGER = "nova_ipmigrate.scheduler.filters"


@pytest.fixture
def flags() -> Iterator[Callable[..., None]]:
    f = Flags()
    yield f.set
    f.clear()


@pytest.fixture
def flt() -> filters.SplitMemoryFilter:
    return filters.SplitMemoryFilter()


def hosts() -> list[Any]:
    return [host("main"), host("subA"), host("subB"), host("subC")]


def run(flt: filters.SplitMemoryFilter, spec: Any, host_states: list[Any] | None = None,
        index: int = 0) -> list[str]:
    """Host names left by Nova's filter handler running only the filter (``spec`` as the
    scheduler gets it, over RPC)."""
    result = nova_filters.HostFilterHandler().get_filtered_objects(
        [flt], host_states if host_states is not None else hosts(), over_rpc(spec), index)
    return [h.host for h in result]


def instance_for(spec: Any, source: str = "main") -> Any:
    instance = fake_instance.fake_instance_obj(
        ctx(), uuid=spec.instance_uuid, host=source, node=source, vm_state="active",
        flavor=spec.flavor, project_id="fake-project", user_id="fake-user")
    instance.info_cache = None  # no network: ensure_network_information returns early
    return instance


class Scheduled(Exception):
    """Raised by the fake select_destinations once it has the spec."""


def capture_select_destinations(calls: list[Any]) -> Callable[..., Any]:
    def select_destinations(context: Any, spec: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(spec.obj_clone())
        raise Scheduled()
    return select_destinations


def mapping_patch() -> Any:
    return mock.patch.object(objects.InstanceMapping, "get_by_instance_uuid",
                             return_value=objects.InstanceMapping(cell_mapping=CELL))


def network_api() -> Any:
    api = mock.Mock()
    api.get_requested_resource_for_instance.return_value = (
        [], objects.RequestLevelParams())
    return api


# -- the moves, as Nova builds their specs ---------------------------------------------


def live_migration_spec(fl: Any, destination: Any = None) -> Any:
    """``compute/api.py live_migrate`` (5598-5623) then ``LiveMigrationTask``
    (``_find_destination`` -> ``_get_request_spec_for_select_destinations``)."""
    stored = persisted(boot_spec(fl))
    instance = instance_for(stored)
    if destination is not None:  # a target host without force: the API pins it
        stored.requested_destination = objects.Destination(host=destination,
                                                           node=destination)
    calls: list[Any] = []
    query = mock.Mock()
    query.select_destinations.side_effect = capture_select_destinations(calls)
    task = live_migrate.LiveMigrationTask(
        ctx(), instance, None, False, False, mock.Mock(), mock.Mock(), mock.Mock(),
        query, mock.Mock(), request_spec=stored)
    task.network_api = network_api()
    with mapping_patch(), \
            mock.patch.object(live_migrate.scheduler_utils, "setup_instance_group"), \
            mock.patch.object(live_migrate.compute_utils, "heal_reqspec_is_bfv"), \
            pytest.raises(Scheduled):
        task._find_destination()
    assert len(calls) == 1
    return calls[0]


def cold_migration_spec(fl: Any, new_flavor: Any = None, same_host_allowed: bool = False,
                        target: str | None = None, cross_cell: bool = False) -> Any:
    """``compute/api.py resize`` (4421-4487), conductor ``_get_request_spec_for_cold_migrate``
    (405: the new flavor) and ``MigrationTask._execute`` up to ``_schedule``."""
    stored = persisted(boot_spec(fl))
    instance = instance_for(stored)
    stored.ignore_hosts = [] if same_host_allowed else [instance.host]
    if target is None:
        stored.requested_destination = objects.Destination(allow_cross_cell_move=cross_cell)
    else:
        stored.requested_destination = objects.Destination(
            host=target, node=target, allow_cross_cell_move=cross_cell)
    new_flavor = new_flavor or fl
    stored.flavor = new_flavor
    calls: list[Any] = []
    query = mock.Mock()
    query.select_destinations.side_effect = capture_select_destinations(calls)
    task = migrate.MigrationTask(ctx(), instance, new_flavor, stored, True, mock.Mock(),
                                 query, mock.Mock(), None, network_api())
    with mapping_patch(), \
            mock.patch.object(migrate.scheduler_utils, "setup_instance_group"), \
            mock.patch.object(migrate.compute_utils, "heal_reqspec_is_bfv"), \
            mock.patch.object(task, "_preallocate_migration", return_value=mock.Mock()), \
            pytest.raises(Scheduled):
        task._execute()
    assert len(calls) == 1
    return calls[0]


def evacuation_spec(fl: Any, destination: str | None = None) -> Any:
    """``compute/api.py evacuate`` (5743-5782, a target host without force) then
    ``ComputeTaskManager.rebuild_instance`` with ``recreate=True`` (1309-1347)."""
    stored = persisted(boot_spec(fl))
    instance = instance_for(stored)
    if destination is not None:
        stored.requested_destination = objects.Destination(host=destination,
                                                           node=destination)
    stored.ignore_hosts = [instance.host]
    stored.reset_forced_destinations()
    stored.requested_resources = []
    stored.request_level_params = objects.RequestLevelParams()
    with mapping_patch():
        conductor_manager.ComputeTaskManager._restrict_request_spec_to_cell(
            ctx(), instance, stored)
    stored.ensure_project_and_user_id(instance)
    return stored


def unshelve_spec(fl: Any, destination: str | None = None) -> Any:
    """``compute/api.py unshelve`` (4739-4813) then ``ComputeTaskManager.unshelve_instance``
    for a shelved-offloaded instance (1077-1113)."""
    stored = persisted(boot_spec(fl))
    instance = instance_for(stored)
    if destination is not None:
        stored.requested_destination = objects.Destination(host=destination)
    stored.reset_forced_destinations()
    stored.requested_resources = []
    stored.request_level_params = objects.RequestLevelParams()
    with mapping_patch():
        conductor_manager.ComputeTaskManager._restrict_request_spec_to_cell(
            ctx(), instance, stored)
    return stored


def rebuild_spec(fl: Any) -> Any:
    """``compute/api.py rebuild`` with a new image (3875-3891) then
    ``ComputeTaskManager.rebuild_instance`` (1345-1354)."""
    stored = persisted(boot_spec(fl))
    instance = instance_for(stored)
    if "scheduler_hints" not in stored or stored.scheduler_hints is None:
        stored.scheduler_hints = {}
    stored.scheduler_hints["_nova_check_type"] = ["rebuild"]
    stored.force_hosts = [instance.host]
    stored.force_nodes = [instance.node]
    with mapping_patch():
        conductor_manager.ComputeTaskManager._restrict_request_spec_to_cell(
            ctx(), instance, stored)
    return stored


def bigger(fl: Any) -> Any:
    """The flavor a resize goes to: ``fl`` with twice its memory."""
    return flavor(memory_mb=2 * fl.memory_mb, flavor_id=fl.id + 1, name=fl.name + ".big",
                  extra_specs=dict(fl.extra_specs))


MOVES: dict[str, Callable[[Any], Any]] = {
    "live_migration": live_migration_spec,
    "live_migration_to_host": lambda fl: live_migration_spec(fl, destination="subB"),
    "cold_migration": cold_migration_spec,
    "cold_migration_to_host": lambda fl: cold_migration_spec(fl, target="subB"),
    "resize": lambda fl: cold_migration_spec(fl, new_flavor=bigger(fl)),
    "resize_same_host_allowed": lambda fl: cold_migration_spec(
        fl, new_flavor=bigger(fl), same_host_allowed=True),
    "resize_cross_cell_targeted": lambda fl: cold_migration_spec(
        fl, target="subB", cross_cell=True),
    "evacuation": evacuation_spec,
    "evacuation_to_host": lambda fl: evacuation_spec(fl, destination="subB"),
    "unshelve_offloaded": unshelve_spec,
    "unshelve_offloaded_to_host": lambda fl: unshelve_spec(fl, destination="subB"),
}


# -- boots -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {},
    {"requested_host": "subB"},
    {"num_instances": 3},
    {"scheduler_hints": {"group": [uuids.group], "different_host": [uuids.other]}},
], ids=["plain", "requested_host", "multi_create", "user_hints"])
def test_boot_of_split_instance_passes(flt: Any, kwargs: dict[str, Any]) -> None:
    spec = boot_spec(flavor(), **kwargs)
    assert filters.move_markers(spec) == []
    assert run(flt, spec) == ["main", "subA", "subB", "subC"]


def test_boot_passes_after_request_filters_and_cell_lookup(flt: Any) -> None:
    """The scheduler's request filters give a boot a Destination with aggregates
    (request_filter.py:88-163); reading allow_cross_cell_move loads its default: still
    no move marker."""
    spec = boot_spec(flavor())
    spec.requested_destination = objects.Destination()
    spec.requested_destination.require_aggregates([uuids.agg])
    assert spec.requested_destination.allow_cross_cell_move is False
    assert filters.move_markers(spec) == []
    assert run(flt, spec) == ["main", "subA", "subB", "subC"]


# -- Nova's own moves ------------------------------------------------------------------


@pytest.mark.parametrize("move", sorted(MOVES))
def test_stock_move_of_split_instance_gets_no_host(flt: Any, move: str) -> None:
    spec = MOVES[move](flavor())
    assert filters.move_markers(over_rpc(spec)), move
    assert filters.refused_move(over_rpc(spec)) is not None
    assert run(flt, spec) == []
    assert not any(flt.host_passes(h, over_rpc(spec)) for h in hosts())


@pytest.mark.parametrize("move", sorted(MOVES))
def test_stock_move_of_plain_instance_passes(flt: Any, move: str) -> None:
    spec = MOVES[move](flavor(split=False))
    assert filters.move_markers(spec)
    assert run(flt, spec) == ["main", "subA", "subB", "subC"]


def test_move_markers_name_what_the_conductor_set() -> None:
    live = filters.move_markers(live_migration_spec(flavor()))
    assert live == [f"requested_destination.cell={uuids.cell1}", "ignore_hosts=main"]
    cross = filters.move_markers(
        cold_migration_spec(flavor(), target="subB", cross_cell=True))
    assert cross == ["requested_destination.cell=None", "ignore_hosts=main"]
    unshelve = filters.move_markers(unshelve_spec(flavor()))
    assert unshelve == [f"requested_destination.cell={uuids.cell1}"]


def test_ignore_hosts_alone_marks_a_move(flt: Any) -> None:
    spec = boot_spec(flavor())
    spec.ignore_hosts = ["main"]
    assert run(flt, spec) == []


def test_refusal_is_logged_once_per_request(flt: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    spec = live_migration_spec(flavor(name="m1.split"))
    assert run(flt, spec, [host(f"h{i}") for i in range(5)]) == []
    records = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert len(records) == 1
    message = records[0].getMessage()
    assert uuids.instance in message
    assert "m1.split" in message and "ipmigrate:split_memory" in message
    assert "ignore_hosts=main" in message


def test_malformed_split_spec_is_refused_on_move(flt: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    spec = live_migration_spec(flavor(extra_specs={"ipmigrate:split_memory": "maybe"}))
    assert run(flt, spec) == []
    assert "malformed" in caplog.text


def test_malformed_split_spec_boot_passes(flt: Any) -> None:
    spec = boot_spec(flavor(extra_specs={"ipmigrate:split_memory": "maybe"}))
    assert run(flt, spec) == ["main", "subA", "subB", "subC"]


def test_refuse_nova_moves_false_lets_moves_through(flt: Any, flags: Any) -> None:
    flags("refuse_nova_moves", False)
    assert run(flt, live_migration_spec(flavor())) == ["main", "subA", "subB", "subC"]


def test_rebuild_is_not_filtered(flt: Any) -> None:
    spec = rebuild_spec(flavor())
    assert filters.SplitMemoryFilter.RUN_ON_REBUILD is False
    # a cell is set, but _nova_check_type=rebuild: the filter does not run
    assert filters.move_markers(spec)
    assert run(flt, spec, [host("main")]) == ["main"]


# -- the engine's part requests --------------------------------------------------------


def test_part_fits(flt: Any) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), part_mb=1024)
    assert flt.host_passes(host("subB", free_ram_mb=1024), over_rpc(spec))
    assert flt.host_passes(host("subB", free_ram_mb=4096), over_rpc(spec))


def test_part_does_not_fit(flt: Any) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), part_mb=1024)
    assert not flt.host_passes(host("subB", free_ram_mb=1023), over_rpc(spec))
    assert not flt.host_passes(host("subB", free_ram_mb=-10), over_rpc(spec))


def test_part_uses_ram_allocation_ratio(flt: Any) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), part_mb=1024)
    full = {"free_ram_mb": 0, "total_usable_ram_mb": 4096}
    assert flt.host_passes(host("subB", ram_allocation_ratio=1.5, **full), spec)
    assert not flt.host_passes(host("subB", ram_allocation_ratio=1.0, **full), spec)
    assert not flt.host_passes(host("subB", ram_allocation_ratio=None, **full), spec)


def test_part_larger_than_host_is_refused_whatever_the_ratio(flt: Any) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), part_mb=1024)
    small = host("subB", free_ram_mb=512, total_usable_ram_mb=512, ram_allocation_ratio=16.0)
    assert not flt.host_passes(small, spec)


def test_part_refuses_holders(flt: Any) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), holders=("main", "subA"))
    assert run(flt, spec) == ["subB", "subC"]


@pytest.mark.parametrize("purpose", [None, "bogus"])
def test_part_without_known_purpose_refuses_holders(flt: Any, purpose: str | None) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), holders=("main", "subA"), purpose=purpose)
    assert run(flt, spec) == ["subB", "subC"]


@pytest.mark.parametrize("purpose", [hints.PURPOSE_REINTEGRATION, hints.PURPOSE_MAIN_HOST])
def test_holders_pass_for_reintegration_and_main_host(flt: Any, purpose: str) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), holders=("main", "subA"),
                     purpose=purpose)
    assert run(flt, spec) == ["main", "subA", "subB", "subC"]


def test_part_request_checks_memory_per_host(flt: Any) -> None:
    spec = part_spec(persisted(boot_spec(flavor())), part_mb=2048, holders=("main",))
    host_states = [host("main"), host("subA", free_ram_mb=1024), host("subB", free_ram_mb=2048),
                   host("subC", free_ram_mb=0)]
    assert run(flt, spec, host_states) == ["subB"]


def test_reintegration_onto_the_instances_own_host_skips_the_ram_check(flt: Any) -> None:
    """The main host's resource tracker already counts the instance's whole flavor."""
    instance_spec = persisted(boot_spec(flavor()))
    instance = instance_for(instance_spec)
    spec = part_spec(instance_spec, part_mb=4096, holders=("main", "subA"),
                     purpose=hints.PURPOSE_REINTEGRATION)
    main = host("main", free_ram_mb=0, instances=[instance])
    other = host("subA", free_ram_mb=0)
    assert flt.host_passes(main, spec)
    assert not flt.host_passes(other, spec)


def test_part_request_is_not_taken_for_a_move(flt: Any) -> None:
    """The engine's copy of a moved instance's spec may keep a cell, and it sets
    ignore_hosts: the hint wins, even with a split flavor."""
    instance_spec = live_migration_spec(flavor())
    spec = part_spec(instance_spec, holders=("main",))
    spec.flavor.extra_specs = dict(spec.flavor.extra_specs, **{"ipmigrate:split_memory": "1"})
    assert filters.move_markers(spec)
    assert filters.refused_move(spec) is None
    assert run(flt, spec) == ["subA", "subB", "subC"]


def test_part_request_runs_for_every_instance_index(flt: Any) -> None:
    assert flt.run_filter_for_index(1) is True
    spec = part_spec(persisted(boot_spec(flavor())), holders=("main",))
    assert run(flt, spec, index=1) == ["subA", "subB", "subC"]


def test_hint_values_normalise_nova_forms() -> None:
    spec = part_spec(persisted(boot_spec(flavor())), holders=("main",))
    assert spec.get_scheduler_hint(hints.HINT_HOLDERS) == "main"  # Nova unwraps one value
    assert hints.holders(spec) == frozenset({"main"})
    spec.scheduler_hints[hints.HINT_HOLDERS] = ["main", "subA"]
    assert hints.holders(spec) == frozenset({"main", "subA"})
    assert hints.is_part_request(spec)
    assert not hints.is_part_request(boot_spec(flavor()))
    assert hints.purpose(spec) == hints.PURPOSE_PART


def test_loads_by_class_path_as_nova_conf_names_it() -> None:
    """``[filter_scheduler] available_filters`` (host_manager.py:352-359)."""
    classes = nova_filters.HostFilterHandler().get_matching_classes([
        "nova.scheduler.filters.all_filters",
        "nova_ipmigrate.scheduler.filters.SplitMemoryFilter"])
    by_name = {cls.__name__: cls for cls in classes}
    assert by_name["SplitMemoryFilter"] is filters.SplitMemoryFilter
    assert "ComputeFilter" in by_name
