"""The lab's libvirtd configuration and domain XML (no libvirtd)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nova_ipmigrate.lab import libvirt
from nova_ipmigrate.lab.hosts import LabHost

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def _host(tmp_path: Path, n: int = 1) -> LabHost:
    return LabHost(index=n, name=f"h{n}", netns=f"ipm-h{n}", address=f"10.254.0.{n + 1}",
                   prefixlen=24, link=None, state_dir=tmp_path / f"h{n}",
                   mnt_ns=tmp_path / "ns" / f"h{n}.mnt", uts_ns=tmp_path / "ns" / f"h{n}.uts")


def test_config_is_private_to_the_host(tmp_path: Path) -> None:
    d = libvirt.LabLibvirtd(_host(tmp_path), tmp_path / "h1" / "mnt")
    d.write_config()
    etc = tmp_path / "h1" / "libvirt" / "etc"
    qemu = (etc / "qemu.conf").read_text()
    assert f'memory_backing_dir = "{tmp_path}/h1/mnt"' in qemu
    assert 'security_driver = "none"' in qemu and "namespaces = [ ]" in qemu
    conf = (etc / "libvirtd.conf").read_text()
    assert f'host_uuid = "{libvirt.host_uuid("ipm-h1")}"' in conf
    # every host has its own UUID, the same one every time
    assert libvirt.host_uuid("ipm-h1") != libvirt.host_uuid("ipm-h2")
    assert libvirt.host_uuid("ipm-h1") == libvirt.host_uuid("ipm-h1")
    script = d.inner_script()
    for sub, target in libvirt.BIND_DIRS.items():
        assert f"mount --bind {tmp_path}/h1/libvirt/{sub} {target}" in script
    assert script.splitlines()[-1] == f"exec {libvirt.LIBVIRTD} --listen"
    # peer-to-peer migrations reach it on the host's lab address only
    assert "listen_tcp = 1" in conf and 'listen_addr = "10.254.0.2"' in conf
    assert not (etc / "hooks" / "qemu.d" / "50-nova-ipmigrate").exists()


def test_hook_is_installed_executable(tmp_path: Path) -> None:
    d = libvirt.LabLibvirtd(_host(tmp_path), tmp_path / "h1" / "mnt", hook="#!/bin/sh\n")
    d.write_config()
    hook = tmp_path / "h1" / "libvirt" / "etc" / "hooks" / "qemu.d" / "50-nova-ipmigrate"
    assert hook.read_text() == "#!/bin/sh\n" and hook.stat().st_mode & 0o111
    cmd = d.command(["virsh", "list"])
    assert cmd[0] == "nsenter" and "--net=/run/netns/ipm-h1" in cmd and cmd[-2:] == [
        "virsh", "list"]


def test_domain_xml(tmp_path: Path) -> None:
    xml = libvirt.domain_xml("oracle", 512, Path("/k/vmlinuz"), Path("/k/initrd"),
                             "console=ttyS0 a=b&c", tmp_path / "serial.log",
                             tmp_path / "qmp.sock", preload="/s/nohuge.so",
                             domain_uuid="00000000-0000-4000-8000-000000000001")
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "oracle" and root.findtext("memory") == "512"
    mb = root.find("memoryBacking")
    assert mb is not None and mb.find("source").get("type") == "file"  # type: ignore[union-attr]
    assert mb.find("access").get("mode") == "shared"  # type: ignore[union-attr]
    assert root.findtext("os/cmdline") == "console=ttyS0 a=b&c"
    assert root.findtext("on_reboot") == "destroy"
    assert root.find("devices/serial/source").get("path") == str(  # type: ignore[union-attr]
        tmp_path / "serial.log")
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    assert args == ["-qmp", f"unix:{tmp_path}/qmp.sock,server=on,wait=off"]
    envs = {e.get("name"): e.get("value") for e in root.iter(f"{QEMU_NS}env")}
    assert envs == {"LD_PRELOAD": "/s/nohuge.so"}
    kvm = ET.fromstring(libvirt.domain_xml("vm", 256, Path("/k"), Path("/i"), "", Path("/s"),
                                           Path("/q"), accel="kvm"))
    assert kvm.get("type") == "kvm" and not list(kvm.iter(f"{QEMU_NS}env"))


class _FakeLibvirtd:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.started, self.stopped = fail, False, False

    def start(self) -> None:
        if self.fail:
            raise libvirt.LibvirtError("libvirtd on h2 exited with 1")
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def test_start_all_leaves_nothing_running_on_a_failure() -> None:
    ok = [_FakeLibvirtd(), _FakeLibvirtd()]
    libvirt.start_all(ok)  # type: ignore[arg-type]
    assert all(d.started and not d.stopped for d in ok)
    some = [_FakeLibvirtd(), _FakeLibvirtd(fail=True)]
    with pytest.raises(libvirt.LibvirtError, match="h2 exited"):
        libvirt.start_all(some)  # type: ignore[arg-type]
    assert all(d.stopped for d in some)
    libvirt.stop_all(ok)  # type: ignore[arg-type]
    assert all(d.stopped for d in ok)
