"""QEMU command line, environment, smaps parsing and process control (fake QEMU)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nova_ipmigrate.qemu import shim
from nova_ipmigrate.qemu.runner import (
    QemuConfig,
    QemuError,
    QemuProcess,
    build_command,
    build_env,
    parse_smaps_rss_kb,
)

SMAPS = """\
55d0c0a00000-55d0c0e00000 r-xp 00000000 08:01 1234     /usr/bin/qemu-system-x86_64
Size:               4096 kB
Rss:                2048 kB
Pss:                2048 kB
7f1000000000-7f1008000000 rw-s 00000000 00:2f 99       /dev/shm/test dir/guest.ram
Size:             131072 kB
KernelPageSize:        4 kB
Rss:               65536 kB
Pss:               65536 kB
7f1008000000-7f1010000000 rw-s 08000000 00:2f 99       /dev/shm/test dir/guest.ram (deleted)
Size:             131072 kB
Rss:                 100 kB
7f1010000000-7f1010001000 rw-p 00000000 00:00 0
Size:                  4 kB
Rss:                   4 kB
7f1010001000-7f1010002000 rw-s 00000000 00:2f 98       /dev/shm/test dir/guest.ram.bak
Size:                  4 kB
Rss:                   4 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0        [stack]
Size:                132 kB
Rss:                  12 kB
"""


def _config(tmp_path: Path, **kw: object) -> QemuConfig:
    cfg = QemuConfig(
        ram_mb=256, ram_path=tmp_path / "guest.ram", kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.gz", append="console=ttyS0 oracle.mib=160",
        serial_log=tmp_path / "serial.log", qmp_socket=tmp_path / "qmp.sock",
        shim_path=tmp_path / "nohuge.so")
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def test_build_command(tmp_path: Path) -> None:
    cmd = build_command(_config(tmp_path, extra_args=["-S"]))
    assert cmd[0] == "qemu-system-x86_64"
    joined = " ".join(cmd)
    assert "-machine pc,memory-backend=ram0" in joined
    assert "-accel tcg -cpu qemu64 -m 256 -smp 1 -nodefaults -vga none -display none" in joined
    assert (f"memory-backend-file,id=ram0,size=256M,mem-path={tmp_path}/guest.ram,share=on"
            in cmd)
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0 oracle.mib=160"
    assert f"file:{tmp_path}/serial.log" in cmd
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in cmd
    assert "-no-reboot" in cmd and cmd[-1] == "-S"


def test_build_command_accel_is_a_parameter(tmp_path: Path) -> None:
    cmd = build_command(_config(tmp_path, accel="kvm", cpu="host", smp=2,
                                qemu_binary="/opt/qemu/bin/qemu-system-x86_64"))
    assert cmd[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert cmd[cmd.index("-accel") + 1] == "kvm"
    assert cmd[cmd.index("-cpu") + 1] == "host"
    assert cmd[cmd.index("-smp") + 1] == "2"


def test_build_command_rejects_commas(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_command(_config(tmp_path, ram_path=tmp_path / "a,b.ram"))


def test_build_env_preloads_shim(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    env = build_env(cfg, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "LD_PRELOAD": f"{tmp_path}/nohuge.so"}
    env = build_env(cfg, {"LD_PRELOAD": "/lib/other.so"})
    assert env["LD_PRELOAD"] == f"{tmp_path}/nohuge.so /lib/other.so"
    cfg.block_thp_readahead = False
    assert "LD_PRELOAD" not in build_env(cfg, {"PATH": "/bin"})
    cfg.block_thp_readahead, cfg.shim_path = True, None
    with pytest.raises(ValueError, match="shim_path"):
        build_env(cfg, {})


def test_stderr_path(tmp_path: Path) -> None:
    assert _config(tmp_path).stderr_path == tmp_path / "serial.log.qemu.log"
    assert _config(tmp_path, stderr_log=tmp_path / "x.log").stderr_path == tmp_path / "x.log"


def test_parse_smaps_rss() -> None:
    assert parse_smaps_rss_kb(SMAPS, "/dev/shm/test dir/guest.ram") == 65536 + 100
    assert parse_smaps_rss_kb(SMAPS, Path("/dev/shm/test dir/guest.ram.bak")) == 4
    assert parse_smaps_rss_kb(SMAPS, "/not/mapped") == 0
    assert parse_smaps_rss_kb("", "/x") == 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_nohuge_shim_drops_only_hugepage_advice(tmp_path: Path) -> None:
    so = shim.ensure_nohuge_shim(tmp_path)
    assert shim.ensure_nohuge_shim(tmp_path) == so
    # An unaligned address makes the real madvise fail with EINVAL, so the
    # return value tells whether the call reached the kernel.
    probe = ("import ctypes; m = ctypes.CDLL(None, use_errno=True).madvise; "
             "print(m(ctypes.c_void_p(1), 4096, 14), m(ctypes.c_void_p(1), 4096, 4))")
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True, env={"PATH": "/usr/bin:/bin"})
    shimmed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True, env=shim.preload_env(so, {"PATH": "/usr/bin:/bin"}))
    assert plain.stdout.split() == ["-1", "-1"]
    assert shimmed.stdout.split() == ["0", "-1"]  # MADV_HUGEPAGE dropped, DONTNEED forwarded


# ---------------------------------------------------------------- fake QEMU

FAKE_QEMU = textwrap.dedent("""\
    #!{python}
    # Stand-in for qemu-system-x86_64: parses -qmp, serves a minimal QMP.
    import json, os, signal, socket, sys, time
    args = sys.argv[1:]
    mode = os.environ.get("FAKE_MODE", "qmp")
    print("fake qemu", mode, flush=True)
    if mode == "fail":
        print("qemu-system-x86_64: -object memory-backend-file: bad thing", flush=True)
        sys.exit(1)
    path = args[args.index("-qmp") + 1].split(",")[0].removeprefix("unix:")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    while True:
        conn, _ = srv.accept()
        f = conn.makefile("rwb")
        f.write(b'{{"QMP": {{"version": {{}}, "capabilities": []}}}}\\n'); f.flush()
        for line in f:
            msg = json.loads(line)
            f.write(json.dumps({{"return": {{"status": "running"}}, "id": msg["id"]}}).encode()
                    + b"\\n")
            f.flush()
            if msg["execute"] == "quit":
                sys.exit(0)
    """)


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    path = tmp_path / "fake-qemu"
    path.write_text(FAKE_QEMU.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _fake_config(tmp_path: Path, fake_qemu: Path) -> QemuConfig:
    return _config(tmp_path, qemu_binary=str(fake_qemu), block_thp_readahead=False)


def test_process_qmp_and_quit(tmp_path: Path, fake_qemu: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "qmp")
    with QemuProcess(_fake_config(tmp_path, fake_qemu)) as proc:
        assert proc.alive() and proc.pid > 0
        assert proc.qmp().execute("query-status") == {"status": "running"}
        assert proc.ram_mapping_rss_kb() == 0  # not mapped by the fake
    assert not proc.alive()
    assert proc.returncode == 0  # exited through QMP quit
    assert "fake qemu qmp" in proc.log_tail()


def test_process_start_failure_has_log_tail(tmp_path: Path, fake_qemu: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "fail")
    proc = QemuProcess(_fake_config(tmp_path, fake_qemu))
    with pytest.raises(QemuError, match="bad thing"):
        proc.start()
    proc.stop()
    assert not proc.alive()


def test_process_stop_escalates_to_sigkill(tmp_path: Path, fake_qemu: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "stubborn")
    proc = QemuProcess(_fake_config(tmp_path, fake_qemu))
    proc.start()
    rc = proc.stop(timeout=1.0)
    assert rc == -9
    assert not proc.alive()


def test_missing_binary(tmp_path: Path) -> None:
    proc = QemuProcess(_config(tmp_path, qemu_binary=str(tmp_path / "nope"),
                               block_thp_readahead=False))
    with pytest.raises(QemuError, match="apt-get install qemu-system-x86"):
        proc.start()
