"""Transfer strategies (``migration.strategy``): plugins of
``nova_ipmigrate.transfer_strategy``, loaded by name by ``Operations``."""

from __future__ import annotations

import pytest
from stevedore import extension

from nova_ipmigrate import conf as ipm_conf
from nova_ipmigrate.agent.service import _strategy_arg
from nova_ipmigrate.cmd import agent as cmd_agent
from nova_ipmigrate.migration import strategy
from nova_ipmigrate.migration.operations import OperationError, Operations, OpState
from tests.unit.migration.test_operations import PATH, World
from tests.unit.migration.test_transfer import MAIN, Cluster


class Deep:
    """A third-party strategy: direct moves with more regions in flight."""

    name = "deep"
    direct = True
    gather_batch = 4096

    def regions_in_flight(self, configured: int) -> int:
        return configured + 3


class NotAStrategy:
    name = "broken"


def _manager(**plugins: type) -> extension.ExtensionManager:
    return extension.ExtensionManager.make_test_instance(
        [extension.Extension(n, None, cls, cls()) for n, cls in plugins.items()])


def _ops(**kw: object) -> Operations:
    return Operations(MAIN, None, None, **kw)  # type: ignore[arg-type]


def test_the_builtins_are_installed_plugins() -> None:
    assert sorted(strategy.manager().names()) == ["ipmigrate", "naive"]
    ipm = strategy.load("ipmigrate")
    assert isinstance(ipm, strategy.IPmigrate) and ipm.direct
    assert ipm.regions_in_flight(4) == 4
    assert not strategy.load("naive").direct
    assert isinstance(strategy.load("naive"), strategy.TransferStrategy)


def test_operations_load_by_name_and_default() -> None:
    ops = _ops()
    assert ops.strategy().name == "ipmigrate"
    assert ops.strategy("naive").name == "naive"
    assert _ops(default_strategy="naive").strategy(None).name == "naive"


def test_an_unknown_name_lists_the_installed_plugins() -> None:
    with pytest.raises(strategy.UnknownStrategy, match=r"'fast' \(one of ipmigrate, naive\)"):
        strategy.load("fast")
    with pytest.raises(OperationError, match=r"unknown strategy 'fast' \(one of ipmigrate, "
                       r"naive\)") as err:
        _ops().strategy("fast")
    assert err.value.errno == 22
    with pytest.raises(OperationError, match="one of broken, deep"):
        _ops(extensions=_manager(deep=Deep, broken=NotAStrategy)).strategy("naive")
    with pytest.raises(OperationError, match="does not implement TransferStrategy"):
        _ops(extensions=_manager(broken=NotAStrategy)).strategy("broken")


def test_a_third_party_plugin_drives_the_part_move(world: World, cluster: Cluster) -> None:
    world.ops._extensions = _manager(deep=Deep, naive=strategy.Naive)
    op = world.ops.partial_migration(PATH, world.ram, "h2", cluster.endpoint(MAIN),
                                     strategy="deep")
    assert op.strategy == "deep" and isinstance(op.plan, Deep)
    assert [tr.depth for tr in op.transfers] == [world.ops.regions_in_flight + 3]
    assert op.wait(10) and op.state is OpState.DONE, op.error
    assert world.at("h2") == []
    world.guest.check_content()


def test_a_request_naming_no_strategy_gets_the_default(world: World) -> None:
    world.ops.default_strategy = "naive"
    op = world.ops.reintegration(PATH, world.ram)
    assert op.wait(10) and op.state is OpState.DONE, op.error
    pr = op.progress()
    assert pr["strategy"] == "naive" and pr["naive"]["pages_total"] == 40
    world.guest.check_content()


def test_the_control_request_leaves_the_choice_to_the_agent() -> None:
    assert _strategy_arg({}) is None and _strategy_arg({"strategy": ""}) is None
    assert _strategy_arg({"strategy": "naive"}) == "naive"


def test_default_strategy_option_and_start_check() -> None:
    assert ipm_conf.CONF.migration.default_strategy == "ipmigrate"
    ipm_conf.CONF.set_override("default_strategy", "fast", group="migration")
    try:
        with pytest.raises(strategy.UnknownStrategy):
            cmd_agent.check_plugins()
    finally:
        ipm_conf.CONF.clear_override("default_strategy", group="migration")
    cmd_agent.check_plugins()
