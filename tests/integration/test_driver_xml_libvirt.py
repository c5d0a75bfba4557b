"""The driver's domain XML runs on a real libvirtd of a lab host with memfs.

``IPMigrateLibvirtDriver._get_guest_xml`` (Nova's whole LibvirtDriver path, on
Nova's fake libvirt connection, ``tests/nova/tools/domain_xml.py``, in a process
of its own: Nova's threading mode) makes the XML of a 256 MiB split-memory
instance with ``[ipmigrate] qmp_socket_dir = /run/ipmigrate`` (the lab hosts'
private /run). One lab host runs its agent (memfs at libvirt's
``memory_backing_dir``) and its libvirtd with our qemu hook; ``virsh create``
starts the domain there. No sub-host: nothing is split, the RAM file is the one
QEMU creates on memfs at libvirt's path, as in a spawn.

What the test replaces in Nova's XML, because it cannot exist on a lab host
(:func:`lab_domain_xml`; everything else is Nova's, and checked to be):

* ``<os>``: Nova's ``<boot dev='hd'/>`` (boot from the image disk) becomes the
  oracle guest's direct kernel boot (``<kernel>``, ``<initrd>``, ``<cmdline>`` of
  ``lab.libvirt.domain_xml``); Nova's ``<type>`` and ``<smbios>`` stay;
* ``<devices>``: Nova's ``<disk>`` (a qcow2 in Nova's instances_path, which has no
  image on a lab host) and any ``<interface>`` are dropped (there are none: no
  network), Nova's ``<serial type='pty'>`` with its log in the instances_path
  becomes the lab's serial to a file, which the test reads, and the lab's
  ``<emulator>`` is added (libvirt would take the same one). Nova's other devices
  (USB controller and tablet, VNC on 127.0.0.1, video, RNG, and the balloon
  without free page reporting) stay.

Checked: the domain runs; the agent's hook saw it (the agent's ``main_moves``
lists the instance's UUID with Nova's domain name, and memfs serves the RAM file
at ``libvirt/qemu/1-instance-00000001/pc.ram``); QEMU's guest RAM is that file
(``memory-backend-file`` with ``share`` and no ``prealloc`` on its command line, a
shared mapping of it in /proc/<pid>/maps); the extra QMP monitor answers
``query-status``; the guest kernel boots to ``ORACLE START``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from lxml import etree

from nova_ipmigrate.fabric import auth
from nova_ipmigrate.guest.image import ensure_guest_image, kernel_cmdline
from nova_ipmigrate.guest.serial import OracleMonitor
from nova_ipmigrate.hooks.libvirt_qemu import hook_script
from nova_ipmigrate.lab import libvirt
from nova_ipmigrate.lab.hosts import Lab
from nova_ipmigrate.lab.memfsd import AgentDaemon
from nova_ipmigrate.lab.multihost import FABRIC_PORT
from nova_ipmigrate.qemu.qmp import QMPClient
from tests.integration.conftest import REPO, cache_dir

pytestmark = pytest.mark.integration

RAM_MB = 256
#: Nova's name of instance id 1 (``instance_name_template``), libvirt's first domain id
NAME = "instance-00000001"
RAM_FILE = f"libvirt/qemu/1-{NAME}/pc.ram"
QMP_DIR = Path("/run/ipmigrate")
PYTHON = REPO / ".venv" / "bin" / "python"


def driver_xml(vm: str) -> subprocess.Popen[str]:
    """The driver's XML of the instance, made in a process of its own."""
    return subprocess.Popen(
        [str(PYTHON), "-m", "tests.nova.tools.domain_xml", "--uuid", vm,
         "--memory-mb", str(RAM_MB), "--resident-mb", str(RAM_MB // 2), "--sub-hosts", "1",
         "--qmp-dir", str(QMP_DIR)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)


def lab_domain_xml(nova_xml: str, lab_xml: str) -> str:
    """Nova's XML with what a lab host cannot have replaced by the lab's (the module
    docstring says what and why); the lab's elements come from ``lab_xml``
    (``lab.libvirt.domain_xml``)."""
    root = etree.fromstring(nova_xml.encode())
    lab = etree.fromstring(lab_xml.encode())
    os_el, devices = root.find("os"), root.find("devices")
    for boot in os_el.findall("boot"):
        os_el.remove(boot)
    at = list(os_el).index(os_el.find("type")) + 1
    for i, tag in enumerate(("kernel", "initrd", "cmdline")):
        os_el.insert(at + i, lab.find(f"os/{tag}"))
    for tag in ("disk", "interface", "serial", "console", "emulator"):
        for el in devices.findall(tag):
            devices.remove(el)
    devices.insert(0, lab.find("devices/emulator"))
    devices.insert(1, lab.find("devices/serial"))
    return str(etree.tostring(root, encoding="unicode"))


def _untouched(xml: str) -> list[bytes]:
    """Every top-level element but ``<os>`` and ``<devices>``, and every device the
    test keeps, as canonical XML."""
    root = etree.fromstring(xml.encode())
    out = [etree.tostring(el, method="c14n") for el in root
           if el.tag not in ("os", "devices")]
    out += [etree.tostring(el, method="c14n") for el in root.find("devices")
            if el.tag not in ("disk", "interface", "serial", "console", "emulator")]
    out += [etree.tostring(el, method="c14n") for el in root.find("os")
            if el.tag in ("type", "smbios")]
    return out


def test_driver_xml_runs_on_a_lab_libvirtd_with_memfs(workdir: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    if not libvirt.available():
        pytest.skip("needs libvirt-daemon-system (bindep.txt)")
    if not PYTHON.exists():
        pytest.skip(f"needs the project's virtual environment ({PYTHON}): Nova")
    vm = str(uuid.uuid4())
    key = workdir / "fabric.key"
    auth.generate_key_file(key)
    serial = workdir / "serial.log"
    lab = Lab(workdir / "lab", prefix=f"ipd{os.getpid() % 10000}")
    with contextlib.ExitStack() as stack:
        gen = driver_xml(vm)   # meanwhile, the lab comes up
        stack.callback(gen.wait)
        stack.callback(gen.kill)   # a no-op once it ended
        image = ensure_guest_image(cache_dir())
        stack.callback(lab.down)
        (host,) = lab.up(1)
        agent = AgentDaemon(host.state_dir, host.hostname, key, FABRIC_PORT, host.address,
                            prefix=host.enter_command([], cwd=host.state_dir))
        agent.start()
        stack.callback(agent.stop)
        lvd = libvirt.LabLibvirtd(host, agent.mountpoint,
                                  hook=hook_script(str(PYTHON), agent.socket))
        lvd.start()
        stack.callback(lvd.stop)

        out, err = gen.communicate(timeout=120)
        assert gen.returncode == 0, err
        qmp_inside = QMP_DIR / f"{vm}.qmp"
        lab_xml = libvirt.domain_xml(
            NAME, RAM_MB, image.kernel, image.initrd,
            kernel_cmdline(oracle_mib=32, seconds=60), serial, qmp_inside,
            emulator=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
        xml = lab_domain_xml(out, lab_xml)
        (workdir / "nova.xml").write_text(out)
        (workdir / "domain.xml").write_text(xml)
        assert _untouched(xml) == _untouched(out), "more of Nova's XML was changed"
        root = etree.fromstring(xml.encode())
        assert root.findtext("uuid") == vm and root.findtext("name") == NAME
        assert [c.tag for c in root.find("memoryBacking")] == ["source", "access"]

        guest = libvirt.LibvirtGuest(lvd, xml, NAME, agent.mountpoint / RAM_FILE,
                                     host.run_dir / "ipmigrate" / f"{vm}.qmp",
                                     qmp_inside=qmp_inside)
        guest.start()
        stack.callback(guest.stop)
        assert guest.alive()
        state = lvd.virsh("domstate", NAME).stdout.strip()
        assert state == "running", state

        # the hook told the agent: the domain by the instance's UUID, Nova's name
        assert agent.call("main_moves")["domains"] == {vm: NAME}
        files = agent.stats()["files"]
        assert RAM_FILE in files, sorted(files)

        # QEMU's guest RAM is the memfs file, shared, not preallocated
        cmdline = guest.cmdline()
        backend = [a for a in cmdline if "memory-backend-file" in a]
        assert len(backend) == 1, cmdline
        assert '"share":true' in backend[0], backend[0]
        assert f'"mem-path":"{agent.mountpoint / RAM_FILE}"' in backend[0], backend[0]
        assert "prealloc" not in " ".join(cmdline), cmdline
        maps = [line.split() for line in
                Path(f"/proc/{guest.pid}/maps").read_text().splitlines()
                if line.endswith(str(agent.mountpoint / RAM_FILE))]
        assert maps and all(m[1].endswith("s") for m in maps), maps
        assert sum(int(e, 16) - int(s, 16) for s, e in
                   (m[0].split("-") for m in maps)) == RAM_MB << 20, maps

        # the extra QMP monitor of <qemu:commandline> answers
        with QMPClient(guest.qmp_socket, timeout=10) as qmp:
            status = qmp.execute("query-status")
        assert status["status"] == "running", status

        # the guest kernel boots the oracle
        oracle = OracleMonitor(serial)
        assert oracle.wait_for(lambda o: o.started, timeout=60), \
            serial.read_text(errors="replace")[-3000:] if serial.exists() else "no serial log"
        assert not oracle.kernel_panic, oracle.panic_lines
        qemu_log = lvd.dir / "log" / "qemu" / f"{NAME}.log"
        warnings = [line for line in qemu_log.read_text(errors="replace").splitlines()
                    if "warning" in line.lower() or "error" in line.lower()]
        print(f"domain {NAME} ({vm}) on {host.hostname}: {backend[0]}; QMP {status}; "
              f"QEMU's warnings: {warnings}")
