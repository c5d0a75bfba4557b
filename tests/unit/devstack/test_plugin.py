"""The devstack plugin (devstack/): syntax, shellcheck, and a run against stub devstack.

The stub devstack defines the devstack functions the plugin calls; each records its
call in a log, and ``iniset``/``iniget`` really read and write ini files, so the tests
check what the plugin would configure on a controller and on a compute-only node.
"""

from __future__ import annotations

import configparser
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEVSTACK = REPO / "devstack"
SCRIPTS = [DEVSTACK / "plugin.sh", DEVSTACK / "settings", DEVSTACK / "lib" / "ipmigrate"]

INI_PY = r'''
import configparser, sys
op, path, section, option = sys.argv[1:5]
cp = configparser.RawConfigParser(default_section="\x00none")
cp.optionxform = str
cp.read(path)
if op == "get":
    if cp.has_option(section, option):
        print(cp.get(section, option))
    sys.exit(0)
if not cp.has_section(section):
    cp.add_section(section)
cp.set(section, option, " ".join(sys.argv[5:]))
with open(path, "w") as f:
    cp.write(f)
'''

STUBS = r'''
_log() { printf '%s\n' "$*" >> "$STUB_LOG"; }
echo_summary() { _log "echo_summary $*"; }
warn() { _log "warn $*"; }
sudo() { _log "sudo $*"; "$@"; }
is_service_enabled() {
    local s
    for s in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$s,"* ]] && return 0
    done
    return 1
}
enable_service() {
    local s
    for s in "$@"; do
        [[ ",$DISABLED_SERVICES," == *",$s,"* ]] && continue
        is_service_enabled "$s" || ENABLED_SERVICES="$ENABLED_SERVICES,$s"
    done
}
disable_service() {
    local s
    for s in "$@"; do
        DISABLED_SERVICES="$DISABLED_SERVICES,$s"
        ENABLED_SERVICES=$(echo ",$ENABLED_SERVICES," | sed "s/,$s,/,/g; s/^,//; s/,$//")
    done
}
iniset() { _log "iniset $*"; mkdir -p "$(dirname "$1")"; "$STUB_PYTHON" "$STUB_INI" set "$@"; }
iniget() { "$STUB_PYTHON" "$STUB_INI" get "$@"; }
iniset_multiline() { _log "iniset_multiline $*"; }
iniadd() { _log "iniadd $*"; }
iniset_rpc_backend() {
    _log "iniset_rpc_backend $*"
    iniset "$2" "${3:-DEFAULT}" transport_url "rabbit://stackrabbit:secret@$SERVICE_HOST:5672/"
}
configure_keystone_authtoken_middleware() {
    _log "configure_keystone_authtoken_middleware $*"
    iniset "$1" keystone_authtoken auth_type password
    iniset "$1" keystone_authtoken username "$2"
}
setup_develop() { _log "setup_develop $*"; }
install_package() { _log "install_package $*"; }
get_python_exec_prefix() { echo "$STUB_BIN"; }
restart_service() { _log "restart_service $*"; }
create_service_user() { _log "create_service_user $*"; }
get_or_create_service() { _log "get_or_create_service $*"; echo SERVICE_ID; }
get_or_create_endpoint() { _log "get_or_create_endpoint $*"; }
run_process() { _log "run_process $*"; }
stop_process() { _log "stop_process $*"; }
stub_python() { _log "python $*"; }
'''


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_syntax(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if _in_ci():
            pytest.fail("shellcheck is not installed (bindep.txt lists it)")
        pytest.skip("shellcheck is not installed (not CI)")
    proc = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Devstack:
    """A stub devstack in a temporary directory."""

    def __init__(self, tmp: Path, services: str, disabled: str = "") -> None:
        self.tmp = tmp
        self.log = tmp / "calls.log"
        self.etc = tmp / "etc"
        (self.etc / "nova").mkdir(parents=True)
        (self.etc / "libvirt").mkdir(parents=True)
        (tmp / "ini.py").write_text(INI_PY)
        (tmp / "functions").write_text(STUBS)
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("ipmigrate-engine", "ipmigrate-agent", "ipmigrate-api"):
            exe = self.bin / name
            exe.write_text(f'#!/bin/sh\necho "{exe} $*" >> "$STUB_LOG"\n')
            exe.chmod(0o755)
        self.nova_conf = self.etc / "nova" / "nova.conf"
        self.nova_cpu_conf = self.etc / "nova" / "nova-cpu.conf"
        self.nova_conf.write_text("[DEFAULT]\n\n[filter_scheduler]\n"
                                  "enabled_filters = ComputeFilter,ImagePropertiesFilter\n")
        self.nova_cpu_conf.write_text("[DEFAULT]\n")
        self.qemu_conf = self.etc / "libvirt" / "qemu.conf"
        self.qemu_conf.write_text('memory_backing_dir = "/old"\nuser = "root"\n')
        self.conf_dir = self.etc / "nova-ipmigrate"
        self.conf = self.conf_dir / "nova-ipmigrate.conf"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp),
            "STUB_LOG": str(self.log),
            "STUB_INI": str(tmp / "ini.py"),
            "STUB_PYTHON": sys.executable,
            "STUB_BIN": str(self.bin),
            "ENABLED_SERVICES": services,
            "DISABLED_SERVICES": disabled,
            "DEST": str(tmp / "opt"),
            "DATA_DIR": str(tmp / "data"),
            "STACK_USER": getpass.getuser(),
            "SERVICE_HOST": "192.0.2.10",
            "SERVICE_PROTOCOL": "http",
            "REGION_NAME": "RegionOne",
            "ENABLE_DEBUG_LOG_LEVEL": "True",
            "NOVA_CONF": str(self.nova_conf),
            "NOVA_CPU_CONF": str(self.nova_cpu_conf),
            "FILTERS": "ComputeFilter",
            "IPMIGRATE_DIR": str(REPO),
            "IPMIGRATE_CONF_DIR": str(self.conf_dir),
            "IPMIGRATE_PYTHON": "stub_python",
            "IPMIGRATE_QEMU_CONF": str(self.qemu_conf),
            "IPMIGRATE_LIBVIRT_HOOKS_DIR": str(self.etc / "libvirt" / "hooks" / "qemu.d"),
            "IPMIGRATE_QMP_SOCKET_DIR": str(tmp / "run" / "ipmigrate"),
            "IPMIGRATE_AUTH_CACHE_DIR": str(tmp / "cache" / "ipmigrate"),
        }

    def run(self, *phases: str) -> None:
        script = "set -e\nsource \"$STUB_FUNCTIONS\"\nsource \"$IPMIGRATE_DIR/devstack/settings\"\n"
        for phase in phases:
            script += f"source \"$IPMIGRATE_DIR/devstack/plugin.sh\" {phase}\n"
        script += 'echo "ENABLED_SERVICES=$ENABLED_SERVICES" >> "$STUB_LOG"\n'
        env = dict(self.env, STUB_FUNCTIONS=str(self.tmp / "functions"))
        proc = subprocess.run(["bash", "-c", script], env=env, cwd=self.tmp,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def called(self, prefix: str) -> list[str]:
        return [c for c in self.calls() if c.startswith(prefix)]

    @staticmethod
    def ini(path: Path) -> configparser.RawConfigParser:
        cp = configparser.RawConfigParser(default_section="\x00none")
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read(path)
        return cp


CONTROLLER = ("key,n-api,n-sch,n-cpu,placement-api,rabbit,mysql")
STACK = ("stack install", "stack post-config", "stack extra")


@pytest.fixture
def controller(tmp_path: Path) -> Devstack:
    ds = Devstack(tmp_path, CONTROLLER)
    ds.run(*STACK)
    return ds


def test_controller_install(controller: Devstack) -> None:
    (install,) = controller.called("install_package")
    for pkg in ("qemu-system-x86", "libvirt-daemon-system", "libvirt-dev", "busybox-static"):
        assert pkg in install.split()
    assert controller.called("setup_develop") == [f"setup_develop {REPO} compute,nova"]
    assert "python -m nova_ipmigrate.virt.alias install" in controller.calls()


def test_controller_nova_conf(controller: Devstack) -> None:
    nova = controller.ini(controller.nova_conf)
    filters = nova.get("filter_scheduler", "enabled_filters").split(",")
    assert filters[0] == "SplitMemoryFilter"
    assert "ComputeFilter" in filters and "ImagePropertiesFilter" in filters
    weighers = nova.get("filter_scheduler", "weight_classes").split(",")
    assert "nova_ipmigrate.scheduler.weighers.SplitMemoryWeigher" in weighers
    assert "nova.scheduler.weights.all_weighers" in weighers
    assert nova.get("oslo_messaging_notifications", "driver") == "messagingv2"
    assert nova.get("notifications", "notification_format") == "both"

    cpu = controller.ini(controller.nova_cpu_conf)
    assert cpu.get("DEFAULT", "compute_driver") == "ipmigrate.driver.IPMigrateLibvirtDriver"
    assert cpu.get("DEFAULT", "ram_allocation_ratio") == "1.0"
    assert cpu.get("DEFAULT", "reserved_host_memory_mb") == "0"
    assert cpu.get("libvirt", "file_backed_memory") == "8192"
    assert cpu.get("ipmigrate", "qmp_socket_dir") == str(controller.tmp / "run" / "ipmigrate")
    assert cpu.get("oslo_messaging_notifications", "driver") == "messagingv2"


def test_controller_filters_added_once(tmp_path: Path) -> None:
    ds = Devstack(tmp_path, CONTROLLER)
    ds.run("stack post-config")
    ds.run("stack post-config")
    nova = ds.ini(ds.nova_conf)
    assert nova.get("filter_scheduler", "enabled_filters").count("SplitMemoryFilter") == 1
    assert nova.get("filter_scheduler", "weight_classes").count("SplitMemoryWeigher") == 1


def test_controller_ipmigrate_conf(controller: Devstack) -> None:
    conf = controller.ini(controller.conf)
    state = str(controller.tmp / "data" / "nova-ipmigrate")
    assert conf.get("DEFAULT", "state_path") == state
    assert conf.get("DEFAULT", "transport_url").startswith("rabbit://")
    assert conf.get("oslo_messaging_notifications", "driver") == "messagingv2"
    assert conf.get("engine", "backend") == "nova"
    assert conf.get("engine", "nova_config_files") == str(controller.nova_conf)
    assert conf.get("engine", "hosts")
    assert conf.get("database", "connection") == f"sqlite:///{state}/engine.sqlite"
    assert conf.get("api", "port") == "9890"
    assert conf.get("api", "auth_strategy") == "keystone"
    assert conf.get("keystone_authtoken", "username") == "ipmigrate"
    assert conf.get("memfs", "mountpoint") == f"{state}/memfs"
    key_file = Path(conf.get("fabric", "key_file"))
    assert key_file.stat().st_mode & 0o077 == 0
    assert len(key_file.read_text().strip()) >= 32
    assert Path(conf.get("oslo_policy", "policy_file")).is_file()


def test_controller_libvirt(controller: Devstack) -> None:
    state = controller.tmp / "data" / "nova-ipmigrate"
    qemu = controller.qemu_conf.read_text().splitlines()
    assert [line for line in qemu if "memory_backing_dir" in line] == [
        f'memory_backing_dir = "{state}/memfs"']
    assert 'user = "root"' in qemu
    hooks = controller.etc / "libvirt" / "hooks" / "qemu.d"
    assert (f"python -m nova_ipmigrate.hooks.libvirt_qemu install --control-socket "
            f"{state}/agent.sock --hooks-dir {hooks}") in controller.calls()
    assert "restart_service libvirtd" in controller.calls()


def test_controller_keystone(controller: Devstack) -> None:
    assert controller.called("create_service_user") == ["create_service_user ipmigrate admin"]
    (service,) = controller.called("get_or_create_service")
    assert service.startswith("get_or_create_service ipmigrate memory-migration")
    assert controller.called("get_or_create_endpoint") == [
        "get_or_create_endpoint SERVICE_ID RegionOne http://192.0.2.10:9890/"]


def test_controller_start(controller: Devstack) -> None:
    conf, bin_dir = controller.conf, controller.bin
    calls = controller.calls()
    sync = f"{bin_dir}/ipmigrate-engine --config-file {conf} db sync"
    assert sync in calls
    runs = controller.called("run_process")
    assert runs == [
        f"run_process ipmigrate-agent {bin_dir}/ipmigrate-agent --config-file {conf}",
        f"run_process ipmigrate-engine {bin_dir}/ipmigrate-engine --config-file {conf}",
        f"run_process ipmigrate-api {bin_dir}/ipmigrate-api --config-file {conf}",
    ]
    # the database is synced before the engine starts
    assert calls.index(sync) < calls.index(runs[0])


def test_unstack_and_clean(controller: Devstack) -> None:
    controller.run("unstack", "clean")
    assert controller.called("stop_process") == [
        "stop_process ipmigrate-agent", "stop_process ipmigrate-engine",
        "stop_process ipmigrate-api"]
    assert not controller.conf_dir.exists()
    assert not (controller.tmp / "data" / "nova-ipmigrate").exists()


def test_compute_only_node(tmp_path: Path) -> None:
    ds = Devstack(tmp_path, "n-cpu,placement-client",
                  disabled="ipmigrate-engine,ipmigrate-api")
    ds.run(*STACK)
    (enabled,) = [c for c in ds.calls() if c.startswith("ENABLED_SERVICES=")]
    services = enabled.split("=", 1)[1].split(",")
    assert "ipmigrate" in services and "ipmigrate-agent" in services
    assert "ipmigrate-engine" not in services and "ipmigrate-api" not in services
    assert ds.called("run_process") == [
        f"run_process ipmigrate-agent {ds.bin}/ipmigrate-agent --config-file {ds.conf}"]
    assert not [c for c in ds.calls() if "db sync" in c]
    assert not ds.called("create_service_user")
    assert not ds.called("get_or_create_service")
    assert not ds.called("get_or_create_endpoint")
    conf = ds.ini(ds.conf)
    assert not conf.has_section("engine") and not conf.has_section("api")
    assert conf.get("agent", "control_socket")
    cpu = ds.ini(ds.nova_cpu_conf)
    assert cpu.get("DEFAULT", "compute_driver") == "ipmigrate.driver.IPMigrateLibvirtDriver"
    nova = ds.ini(ds.nova_conf)
    assert "SplitMemoryFilter" not in nova.get("filter_scheduler", "enabled_filters")
