"""The ``nova.virt.ipmigrate`` alias: the finder, the ``.pth`` and its CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import nova_ipmigrate.virt
import nova_ipmigrate.virt.splitspec
from nova_ipmigrate.virt import alias


@pytest.fixture
def finder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The finder installed for one test; the alias modules forgotten after it."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    alias.install()
    yield
    for name in [n for n in sys.modules if n == alias.ALIAS or n.startswith(alias.ALIAS + ".")]:
        del sys.modules[name]


def test_alias_modules_are_the_same_objects(finder: None) -> None:
    import nova.virt.ipmigrate
    import nova.virt.ipmigrate.splitspec as aliased

    assert nova.virt.ipmigrate is nova_ipmigrate.virt
    assert aliased is nova_ipmigrate.virt.splitspec
    assert aliased.SplitSpec is nova_ipmigrate.virt.splitspec.SplitSpec
    assert sys.modules["nova.virt.ipmigrate.splitspec"] is nova_ipmigrate.virt.splitspec


def test_finder_ignores_other_names() -> None:
    f = alias.AliasFinder()
    assert f.find_spec("nova.virt.libvirt") is None
    assert f.find_spec("nova.virt.ipmigrated") is None
    spec = f.find_spec("nova.virt.ipmigrate.driver")
    assert spec is not None and spec.name == "nova.virt.ipmigrate.driver"


def test_install_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [m for m in sys.meta_path
                                           if getattr(m, "alias", None) != alias.ALIAS])
    alias.install()
    alias.install()
    ours = [m for m in sys.meta_path if getattr(m, "alias", None) == alias.ALIAS]
    assert len(ours) == 1 and sys.meta_path[0] is ours[0]


def test_cli_install_and_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    pth = site / alias.PTH_NAME
    assert alias.main(["install", "--site-packages", str(site)]) == 0
    assert pth.read_text() == alias.pth_line()
    assert f"wrote {pth}" in capsys.readouterr().out
    assert alias.main(["install", "--site-packages", str(site)]) == 0
    assert "already installed" in capsys.readouterr().out
    pth.write_text("import old\n")                     # an older line is replaced
    alias.main(["install", "--site-packages", str(site)])
    assert pth.read_text() == alias.pth_line()
    capsys.readouterr()
    assert alias.main(["uninstall", "--site-packages", str(site)]) == 0
    assert not pth.exists()
    assert f"removed {pth}" in capsys.readouterr().out
    assert alias.main(["uninstall", "--site-packages", str(site)]) == 0
    assert "not installed" in capsys.readouterr().out


def test_pth_line_installs_one_finder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [])
    exec(alias.pth_line(), {})                  # what site does with a .pth's import line
    assert [getattr(f, "alias", None) for f in sys.meta_path] == [alias.ALIAS]
    assert type(sys.meta_path[0]) is not alias.AliasFinder    # the .pth's own copy ...
    alias.install()                                          # ... which this one sees
    assert len(sys.meta_path) == 1


def test_pth_line_is_a_noop_without_the_module(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [])
    exec(alias.pth_line(tmp_path / "gone.py"), {})
    assert sys.meta_path == []


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OS_NOVA_DISABLE_EVENTLET_PATCHING": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_pth_makes_nova_load_the_driver(tmp_path: Path) -> None:
    """A new interpreter (site processing, no -S) with the ``.pth`` in a site dir
    imports ``nova.virt.ipmigrate.driver``, as nova-compute does."""
    alias.install_pth(tmp_path)
    result = run_python(f"""
        import site, sys
        from nova import monkey_patch
        monkey_patch.patch(backend="threading")   # as nova-compute starts
        if not any(getattr(f, "alias", None) for f in sys.meta_path):  # not in this venv
            try:
                import nova.virt.ipmigrate
            except ImportError:
                pass
            else:
                sys.exit("nova.virt.ipmigrate importable before the .pth was read")
        site.addsitedir({str(tmp_path)!r})
        assert "nova_ipmigrate" not in sys.modules, "the .pth imported the package"
        import nova.virt.ipmigrate.driver as aliased
        import nova_ipmigrate.virt.driver as real
        from oslo_utils import importutils
        cls = importutils.import_class("nova.virt.ipmigrate.driver.IPMigrateLibvirtDriver")
        assert aliased is real and cls is real.IPMigrateLibvirtDriver
        print("ok", cls.__module__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "nova_ipmigrate.virt.driver"]


def test_pth_without_nova(tmp_path: Path) -> None:
    """The ``.pth`` imports nothing of Nova nor of the plug-in at interpreter start."""
    alias.install_pth(tmp_path)
    result = run_python(f"""
        import site, sys
        site.addsitedir({str(tmp_path)!r})
        assert any(getattr(f, "alias", None) == "nova.virt.ipmigrate" for f in sys.meta_path)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("nova", "nova_ipmigrate")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
