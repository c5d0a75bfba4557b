"""The ``ipmigrate:*`` flavor extra-spec validators, loaded by Nova's own loader."""

from __future__ import annotations

import configparser
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from nova import exception
from nova.api.validation.extra_specs import validators
from stevedore import extension

from nova_ipmigrate.virt import extra_specs, splitspec

SETUP_CFG = Path(__file__).resolve().parents[4] / "setup.cfg"


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nova's ``load_validators()`` run over our plug-in, as nova-api runs it over the
    ``nova.api.extra_spec_validators`` entry points (registry restored afterwards)."""
    monkeypatch.setattr(validators, "VALIDATORS", dict(validators.VALIDATORS))
    monkeypatch.setattr(validators, "NAMESPACES", set(validators.NAMESPACES))
    manager = extension.ExtensionManager.make_test_instance(
        [extension.Extension("ipmigrate", None, extra_specs, None)])
    with mock.patch.object(validators.extension, "ExtensionManager", return_value=manager):
        validators.load_validators()
    yield


def test_entry_point_is_declared() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    entries = cfg["entry_points"]["nova.api.extra_spec_validators"].split()
    assert entries == ["ipmigrate", "=", "nova_ipmigrate.virt.extra_specs"]


def test_registers_every_split_spec_key() -> None:
    names = {v.name for v in extra_specs.register()}
    assert names == {splitspec.SPLIT_MEMORY, splitspec.SUB_HOSTS, splitspec.RESIDENT_MB,
                     splitspec.PLACEMENT}
    assert all(v.description for v in extra_specs.register())


def test_placement_names_are_the_plugins() -> None:
    assert {"round_robin", "least_loaded"} <= set(extra_specs.placement_policies())


@pytest.mark.parametrize(("name", "value"), [
    (splitspec.SPLIT_MEMORY, "true"), (splitspec.SPLIT_MEMORY, "False"),
    (splitspec.SPLIT_MEMORY, "1"), (splitspec.SPLIT_MEMORY, "off"),
    (splitspec.SUB_HOSTS, "1"), (splitspec.SUB_HOSTS, "16"),
    (splitspec.RESIDENT_MB, "64"), (splitspec.RESIDENT_MB, "65536"),
    (splitspec.PLACEMENT, "round_robin"), (splitspec.PLACEMENT, "least_loaded"),
])
def test_good_values_pass(loaded: None, name: str, value: str) -> None:
    validators.validate(name, value)
    # and the driver reads them the same way
    splitspec.from_extra_specs({splitspec.SPLIT_MEMORY: "true", splitspec.RESIDENT_MB: "64",
                                name: value}, 131072)


@pytest.mark.parametrize(("name", "value", "why"), [
    (splitspec.SPLIT_MEMORY, "maybe", "true or false"),
    (splitspec.SPLIT_MEMORY, "t", "true or false"),       # Nova's bools take it, we do not
    (splitspec.SUB_HOSTS, "0", "less than the min"),
    (splitspec.SUB_HOSTS, "17", "greater than the max"),
    (splitspec.SUB_HOSTS, "two", "not a valid integer"),
    (splitspec.RESIDENT_MB, "63", "less than the min"),
    (splitspec.PLACEMENT, "nearest", "not one of"),
    ("ipmigrate:split", "true", "not appear to be a valid extra spec"),
])
def test_bad_values_are_refused(loaded: None, name: str, value: str, why: str) -> None:
    with pytest.raises(exception.ValidationError, match=why):
        validators.validate(name, value)

