"""``nova.virt.ipmigrate[.x]`` as an alias of ``nova_ipmigrate.virt[.x]``.

Nova imports its compute driver as ``'nova.virt.' + CONF.compute_driver``, so
``compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver`` needs a module
``nova.virt.ipmigrate.driver``. A ``sys.meta_path`` finder answers for that name with
the module object of ``nova_ipmigrate.virt.driver`` (the same object, not a copy). It
works with a wheel-installed and with an editable Nova, unlike a shim directory in
``nova/virt/``.

``python -m nova_ipmigrate.virt.alias install [--site-packages DIR]`` writes
``nova_ipmigrate_alias.pth`` into the environment's purelib, which installs the finder
at every interpreter start; ``uninstall`` removes it. The ``.pth`` loads this file by
its path, not as ``nova_ipmigrate.virt.alias``: that would import the
``nova_ipmigrate`` package (and oslo.service) in every Python process of the
environment. It does nothing else and imports nothing of Nova; it is a no-op once
this file is gone.
"""

from __future__ import annotations

# only what site has imported anyway: this runs at every interpreter start (the public
# importlib.abc.Loader is this one, but importlib.abc imports typing: ~14 ms)
import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from importlib._abc import Loader
from pathlib import Path
from types import ModuleType

ALIAS = "nova.virt.ipmigrate"
TARGET = "nova_ipmigrate.virt"
PTH_NAME = "nova_ipmigrate_alias.pth"


class AliasLoader(Loader):
    """Loads an alias as the module it stands for (imported by its own name)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing: the target ran when it was imported."""


class AliasFinder:
    """Finds ``ALIAS[.x]`` as ``TARGET[.x]``."""

    alias = ALIAS
    target = TARGET

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.alias and not fullname.startswith(self.alias + "."):
            return None
        return importlib.machinery.ModuleSpec(
            fullname, AliasLoader(self.target + fullname[len(self.alias):]))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (before the path finder, which would
    load a second copy of a submodule from the alias package's ``__path__``); once:
    the ``.pth``'s copy of this module and an imported one share it."""
    if not any(getattr(f, "alias", None) == ALIAS for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())


def pth_line(module_file: Path | None = None) -> str:
    """The ``.pth`` line: load this file (if it is still there) and :func:`install`."""
    path = str((module_file or Path(__file__)).resolve())
    return ("import os, importlib.util as u; "
            f"p = {path!r}; "
            "s = os.path.isfile(p) and u.spec_from_file_location('_nova_ipmigrate_alias', p); "
            "m = s and u.module_from_spec(s); "
            "m and (s.loader.exec_module(m) or m.install())\n")


def install_pth(site_packages: Path) -> tuple[Path, bool]:
    """Write the ``.pth`` into ``site_packages``: its path, and whether it changed."""
    pth = site_packages / PTH_NAME
    line = pth_line()
    if pth.is_file() and pth.read_text() == line:
        return pth, False
    site_packages.mkdir(parents=True, exist_ok=True)
    pth.write_text(line)
    return pth, True


def uninstall_pth(site_packages: Path) -> tuple[Path, bool]:
    """Remove the ``.pth`` from ``site_packages``: its path, and whether it was there."""
    pth = site_packages / PTH_NAME
    existed = pth.is_file()
    pth.unlink(missing_ok=True)
    return pth, existed


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sysconfig

    parser = argparse.ArgumentParser(
        prog="python -m nova_ipmigrate.virt.alias",
        description=f"Make {ALIAS} an alias of {TARGET}, so that nova-compute can load "
        "compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver.")
    parser.add_argument("action", choices=("install", "uninstall"))
    parser.add_argument("--site-packages", type=Path,
                        default=Path(sysconfig.get_paths()["purelib"]),
                        help="directory of the .pth (default: this environment's purelib, "
                        "%(default)s)")
    args = parser.parse_args(argv)
    if args.action == "install":
        pth, changed = install_pth(args.site_packages)
        state = "wrote" if changed else "already installed:"
        print(f"{state} {pth}: {ALIAS} is {TARGET} in new Python processes; "
              "nova.conf: [DEFAULT] compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver")
    else:
        pth, existed = uninstall_pth(args.site_packages)
        print(f"removed {pth}" if existed else f"not installed: no {pth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
