"""``ipmigrate-engine``: db sync / db version, and serve until SIGTERM (subprocesses)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from nova_ipmigrate.engine.db import Database


def _conf(tmp_path: Path) -> Path:
    path = tmp_path / "engine.conf"
    path.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\ntransport_url = fake://\n"
                    f"[engine]\nhosts = h1,h2\nhost = eng-test\n")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nova_ipmigrate.cmd.engine", *args],
                          capture_output=True, text=True, timeout=60)


def test_db_sync_and_version(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    out = _run("--config-file", str(conf), "db", "version")
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "none", out.stderr
    out = _run("--config-file", str(conf), "db", "sync")
    assert out.returncode == 0, out.stderr
    assert "revision 0001" in out.stdout
    db = Database(f"sqlite:///{tmp_path}/engine.sqlite")
    db.check_synced()
    db.close()


def test_serve_refuses_an_unsynced_database(tmp_path: Path) -> None:
    out = _run("--config-file", str(_conf(tmp_path)))
    assert out.returncode == 2 and "db sync" in out.stderr


def test_serve_stops_on_sigterm(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    assert _run("--config-file", str(conf), "db", "sync").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "nova_ipmigrate.cmd.engine",
                             "--config-file", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:            # log lines first (oslo.log writes to stdout)
            if "engine eng-test ready" in line:
                break
        else:
            raise AssertionError("the engine exited before it was ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
