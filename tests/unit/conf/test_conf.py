"""Tests of nova_ipmigrate.conf: registration, help texts, defaults and bounds."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

import pytest
from oslo_config import cfg

import nova_ipmigrate.conf
from nova_ipmigrate.conf import opts

EXPECTED_GROUPS = {"DEFAULT", "memfs", "guest", "lab", "fabric", "agent", "migration",
                   "engine", "database", "libvirt", "api"}


def _group_name(group: str | cfg.OptGroup | None) -> str:
    if group is None:
        return "DEFAULT"
    return group if isinstance(group, str) else group.name


def _option_modules() -> list[str]:
    package = nova_ipmigrate.conf
    return [
        f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if info.name != "opts"
    ]


@pytest.fixture
def conf() -> cfg.ConfigOpts:
    """A private ConfigOpts with every group registered, parsed without files."""
    config = cfg.ConfigOpts()
    for name in _option_modules():
        importlib.import_module(name).register_opts(config)
    config([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    return config


def test_every_option_has_help() -> None:
    for group, group_opts in opts.list_opts():
        for opt in group_opts:
            assert opt.help and opt.help.strip(), f"{_group_name(group)}.{opt.name} has no help"


def test_every_group_has_help() -> None:
    for group, _ in opts.list_opts():
        if isinstance(group, cfg.OptGroup):
            assert group.help, f"group {group.name} has no help"


def test_list_opts_covers_all_groups() -> None:
    assert {_group_name(group) for group, _ in opts.list_opts()} == EXPECTED_GROUPS


def test_list_opts_covers_every_option_module() -> None:
    listed = {id(opt) for _, group_opts in opts.list_opts() for opt in group_opts}
    for name in _option_modules():
        for _, module_opts in importlib.import_module(name).list_opts():
            for opt in module_opts:
                assert id(opt) in listed, f"{name}: {opt.name} missing from opts.list_opts()"


def test_no_duplicate_option_names() -> None:
    for group, group_opts in opts.list_opts():
        names = [opt.name for opt in group_opts]
        assert len(names) == len(set(names)), f"duplicate options in {_group_name(group)}"


def test_global_conf_has_every_group() -> None:
    global_conf = nova_ipmigrate.conf.CONF
    assert global_conf.state_path == "/var/lib/nova-ipmigrate"
    for group in EXPECTED_GROUPS - {"DEFAULT"}:
        assert group in global_conf


def test_defaults_interpolate(conf: cfg.ConfigOpts) -> None:
    assert conf.state_path == "/var/lib/nova-ipmigrate"
    assert conf.memfs.mountpoint == "/var/lib/nova-ipmigrate/memfs"
    assert conf.memfs.control_socket == "/var/lib/nova-ipmigrate/memfs.sock"
    assert conf.guest.cache_dir == "/var/lib/nova-ipmigrate/cache"


def test_paths_follow_state_path(conf: cfg.ConfigOpts) -> None:
    conf.set_override("state_path", "/srv/ipm")
    assert conf.memfs.mountpoint == "/srv/ipm/memfs"
    assert conf.memfs.control_socket == "/srv/ipm/memfs.sock"
    assert conf.guest.cache_dir == "/srv/ipm/cache"


def test_memfs_defaults(conf: cfg.ConfigOpts) -> None:
    memfs = conf.memfs
    assert memfs.reader_threads == 2
    assert memfs.max_readahead_kb == 0
    assert memfs.block_thp_readahead is True
    assert memfs.default_resident_limit_mb == 0
    assert memfs.page_store_mb == 4096
    assert memfs.eviction_batch_pages == 256
    assert memfs.eviction_target_pct == 90
    assert memfs.pin_resident_pages is True
    assert memfs.tune_bdi is True
    assert memfs.shutdown_timeout == 10


def test_guest_defaults(conf: cfg.ConfigOpts) -> None:
    assert conf.guest.kernel_package == "linux-image-amd64"
    assert conf.guest.qemu_binary == "qemu-system-x86_64"
    assert conf.guest.accel == "tcg"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("reader_threads", 1),
        ("max_readahead_kb", -1),
        ("max_readahead_kb", 1025),
        ("default_resident_limit_mb", -1),
        ("page_store_mb", 0),
        ("eviction_batch_pages", 0),
        ("eviction_target_pct", 9),
        ("eviction_target_pct", 101),
    ],
)
def test_memfs_bounds(conf: cfg.ConfigOpts, name: str, value: int) -> None:
    with pytest.raises(ValueError):
        conf.set_override(name, value, group="memfs")


def test_config_generator_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="oslo.config.opts")
    matches = [ep for ep in entry_points if ep.name == "nova-ipmigrate"]
    assert matches, "entry point oslo.config.opts:nova-ipmigrate missing: pip install -e ."
    assert matches[0].load() is opts.list_opts
