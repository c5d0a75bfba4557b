"""A split-memory instance across 3 lab hosts: continuous remote paging, oracle inside.

A 512 MiB guest runs on h1 (main host, 25% resident); its other pages live on
h2 and h3 and move over the authenticated fabric between namespaces. The
oracle writes and verifies for 60 s of continuous remote paging: 0 mismatches.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nova_ipmigrate.lab.multihost import SplitParams, run_split
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_split_instance_pages_to_two_sub_hosts_for_60s(root: None, workdir: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    p = SplitParams(workdir=workdir, cache_dir=cache_dir(), ram_mb=512, resident_limit_pct=25,
                    seconds=60, hosts=3, lab_prefix=f"ipt{os.getpid() % 10000}")
    r, hosts = run_split(p)
    print(r.summary())
    print(hosts["pages_by_host"])
    assert r.ok, r.verdict
    assert r.mismatches == 0 and r.verified > 100_000
    f = r.memfs["files"]["libvirt/qemu/1-oracle/pc.ram"]
    assert not f["broken"] and f["lost"] == 0
    assert f["remote_page_ins"] > 60 * 200, "continuous remote paging for the whole run"
    assert f["remote_page_outs"] > 60 * 200
    subs = [n for h, n in hosts["pages_by_host"].items() if not h.endswith("-h1")]
    assert len(subs) == 2 and all(n > 1000 for n in subs), hosts["pages_by_host"]
    assert r.max_rss_kb <= r.rss_limit_kb * 1.1 + 4096
    assert all(fab["auth_failures"] == 0 for fab in hosts["fabric"].values())
