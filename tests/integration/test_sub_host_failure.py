"""A sub-host's agent dies while a split VM runs: page-ins fail loudly, never wrongly.

The 512 MiB oracle guest runs split over h1 (main), h2 and h3; 15 s after the
oracle filled its memory h3's agent is killed. The guest's faults on pages held
by h3 wait ([agent] fetch_timeout, 5 s here) and then fail: QEMU gets SIGBUS and
stops, the instance is reported broken with the pages it lost, and the oracle
never saw a wrong page before that.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nova_ipmigrate.lab.multihost import SplitParams, run_split
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_killed_sub_host_breaks_the_instance_loudly(root: None, workdir: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    p = SplitParams(workdir=workdir, cache_dir=cache_dir(), ram_mb=512, resident_limit_pct=25,
                    seconds=120, hosts=3, kill_sub_host_after_s=15, fetch_timeout=5,
                    lab_prefix=f"ipk{os.getpid() % 10000}")
    r, hosts = run_split(p)
    print(r.summary(), r.events)
    assert "kill_sub_host" in r.events
    f = r.memfs["files"]["libvirt/qemu/1-oracle/pc.ram"]
    assert f["broken"] and f["lost_remote_pages"], "the instance is reported broken"
    assert not r.ok and "did not finish" in r.verdict, "the guest stopped, it did not go on"
    assert r.mismatches == 0, "no page-in was ever answered with other data"
    assert r.duration_s < 15 + 120, "it failed within the fetch timeout, it did not hang"
