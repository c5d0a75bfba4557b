"""The driver hands a spawned split-memory instance to the engine."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from nova.virt.libvirt import driver as libvirt_driver

from nova_ipmigrate import exception
from nova_ipmigrate.virt import driver
from tests.nova.unit.virt.test_driver import conf, drvr, make_instance  # noqa: F401

SPLIT = {"ipmigrate:split_memory": "true", "ipmigrate:sub_hosts": "2"}


def _spawn(d: driver.IPMigrateLibvirtDriver, instance: Any, engine: Any) -> Any:
    guest = mock.Mock(id=7, name="guest")
    guest.name = "instance-00000001"
    with mock.patch.object(libvirt_driver.LibvirtDriver, "spawn",
                           return_value="spawned") as spawn, \
            mock.patch.object(d._host, "get_guest", return_value=guest), \
            mock.patch.object(driver.IPMigrateLibvirtDriver, "engine_factory",
                              staticmethod(lambda: engine)):
        d.__dict__["_ipm_host"] = "cmp1"
        out = d.spawn({}, instance, None, [], None, {})
        spawn.assert_called_once()
    return out


def test_a_split_instance_is_handed_to_the_engine(drvr: Any) -> None:  # noqa: F811
    engine = mock.Mock()
    engine.split.return_value = {"id": "op-1"}
    inst = make_instance(SPLIT)
    assert _spawn(drvr, inst, engine) == "spawned"
    engine.split.assert_called_once_with(
        {}, main_host="cmp1", path="libvirt/qemu/7-instance-00000001/pc.ram", vm=inst.uuid)


def test_a_plain_instance_is_not(drvr: Any) -> None:  # noqa: F811
    engine = mock.Mock()
    assert _spawn(drvr, make_instance(), engine) == "spawned"
    engine.split.assert_not_called()


@pytest.mark.parametrize("error", [exception.Unavailable("down", reason="engine"),
                                   exception.Invalid("no room", reason="test")])
def test_an_engine_that_refuses_leaves_it_running_unsplit(
        drvr: Any, error: Exception, caplog: Any) -> None:  # noqa: F811
    engine = mock.Mock()
    engine.split.side_effect = error
    assert _spawn(drvr, make_instance(SPLIT), engine) == "spawned"
    assert "runs unsplit" in caplog.text


def test_the_ram_file_path_is_libvirts_for_long_names(drvr: Any) -> None:  # noqa: F811
    # libvirt shortens the name to 20 characters in its memory-backing directory
    engine = mock.Mock()
    engine.split.return_value = {"id": "op-1"}
    guest = mock.Mock(id=3)
    guest.name = "instance-" + "x" * 30
    with mock.patch.object(libvirt_driver.LibvirtDriver, "spawn", return_value=None), \
            mock.patch.object(drvr._host, "get_guest", return_value=guest), \
            mock.patch.object(driver.IPMigrateLibvirtDriver, "engine_factory",
                              staticmethod(lambda: engine)):
        drvr.spawn({}, make_instance(SPLIT), None, [], None, {})
    assert engine.split.call_args.kwargs["path"] == \
        f"libvirt/qemu/3-instance-{'x' * 11}/pc.ram"
