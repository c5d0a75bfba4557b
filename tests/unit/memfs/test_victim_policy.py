"""Victim policies (``memfs.victim``): plugins of ``nova_ipmigrate.victim_policy``,
loaded by name when the daemon starts; the page table runs their algorithm."""

from __future__ import annotations

from pathlib import Path

import pytest
from stevedore import extension

from nova_ipmigrate import conf as ipm_conf
from nova_ipmigrate.cmd import agent as cmd_agent
from nova_ipmigrate.memfs import victim
from nova_ipmigrate.memfs.pages import VICTIM_POLICIES
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.server import MemFS, MemfsConfig


class Clockish:
    """A third-party policy: its own name, the page table's random selection."""

    algorithm = "random"


class Bogus:
    algorithm = "lfu"


def _manager(**plugins: type) -> extension.ExtensionManager:
    return extension.ExtensionManager.make_test_instance(
        [extension.Extension(n, None, cls, cls()) for n, cls in plugins.items()])


def test_the_builtins_are_installed_plugins() -> None:
    assert sorted(victim.manager().names()) == ["random", "recency"]
    assert isinstance(victim.load("recency"), victim.Recency)
    assert victim.algorithm("random") == "random"
    assert victim.load(victim.DEFAULT).algorithm == "recency"
    assert set(VICTIM_POLICIES) == {"recency", "random"}


def test_an_unknown_name_lists_the_installed_plugins() -> None:
    with pytest.raises(victim.UnknownVictimPolicy, match=r"'lru' \(installed: random, "
                       r"recency\)") as err:
        victim.load("lru")
    assert isinstance(err.value, ValueError) and err.value.available == ["random", "recency"]


def test_a_third_party_plugin_declares_a_builtin_algorithm() -> None:
    mgr = _manager(clockish=Clockish, bogus=Bogus)
    assert victim.algorithm("clockish", mgr) == "random"
    with pytest.raises(ValueError, match="declares algorithm 'lfu'"):
        victim.load("bogus", mgr)
    with pytest.raises(victim.UnknownVictimPolicy, match="installed: bogus, clockish"):
        victim.load("recency", mgr)


def _config(tmp_path: Path, policy: str) -> MemfsConfig:
    return MemfsConfig(mountpoint=tmp_path, page_store_mb=1, victim_policy=policy)


def test_the_daemon_checks_the_policy_before_mounting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown \\[memfs\\] victim_policy 'lru'"):
        MemFS(_config(tmp_path, "lru"))
    fs = MemFS(_config(tmp_path, "random"))
    assert fs.victim_algorithm == "random"
    assert fs.session.config.victim_policy == "random"


def test_the_ram_files_run_the_plugins_algorithm(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(victim, "manager", lambda: _manager(clockish=Clockish))
    fs = MemFS(_config(tmp_path, "clockish"))
    ram = fs.create_ram_file("/vm/pc.ram", 16 * PAGE_SIZE)
    assert ram.victim_policy == "random"
    assert ram.table is not None and ram.table.victim_policy == "random"


def test_the_agent_refuses_an_unknown_policy_at_start() -> None:
    ipm_conf.CONF.set_override("victim_policy", "lru", group="memfs")
    try:
        with pytest.raises(victim.UnknownVictimPolicy):
            cmd_agent.check_plugins()
    finally:
        ipm_conf.CONF.clear_override("victim_policy", group="memfs")
    cmd_agent.check_plugins()
