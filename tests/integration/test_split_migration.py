"""Split migration: a running single-host VM becomes a split-memory instance.

The 512 MiB oracle guest boots on h1 with no limit (a normal VM, every page
local); 20 s after it filled its memory it is split while it runs: resident
limit 25%, h2 and h3 as sub-hosts. It keeps writing and verifying for the rest
of its 60 s: 0 mismatches, and the sub-hosts end up holding its cold pages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nova_ipmigrate.lab.multihost import SplitParams, run_split
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_split_migration_of_a_running_vm(root: None, workdir: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    p = SplitParams(workdir=workdir, cache_dir=cache_dir(), ram_mb=512, resident_limit_pct=25,
                    seconds=60, hosts=3, split_after_s=20,
                    lab_prefix=f"ips{os.getpid() % 10000}")
    r, hosts = run_split(p)
    print(r.summary(), hosts["pages_by_host"], r.events)
    assert r.ok, r.verdict
    assert r.mismatches == 0
    ev = r.events["split_migration"]
    assert ev["ok"] and ev["pages_to_move"] > 50_000, ev
    before = [s for s in r.samples if s.t < ev["t"]]
    assert before and max(s.resident_pages for s in before) > 2 * p.limit_bytes // 4096, \
        "before the split the VM was a normal one: most pages resident on h1"
    f = r.memfs["files"]["libvirt/qemu/1-oracle/pc.ram"]
    assert f["resident"] <= p.limit_bytes // 4096 * 1.06
    subs = [n for h, n in hosts["pages_by_host"].items() if not h.endswith("-h1")]
    assert all(n > 10_000 for n in subs), hosts["pages_by_host"]
    assert not f["broken"] and f["lost"] == 0
