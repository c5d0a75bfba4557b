"""The guest's RAM on memfs under a resident limit: QEMU TCG, the oracle, real paging.

A 256 MiB guest whose RAM file is limited to 25% resident runs the oracle for
60 s of continuous paging (the issue's minimum; also in CI's quick mode).
It must end with 0 mismatches, QEMU's RSS of the RAM mapping must stay under
the limit plus slack, and a memory-cgroup reclaim forced mid-run must lose
nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nova_ipmigrate.lab.singlehost import SingleHostParams, run_single_host
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration
MIB = 2**20


@pytest.fixture
def qemu(root: None) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")


def test_oracle_guest_pages_continuously_under_a_quarter_resident_limit(
        qemu: None, workdir: Path) -> None:
    params = SingleHostParams(workdir=workdir, cache_dir=cache_dir(), ram_mb=256,
                              resident_limit_pct=25, seconds=60, reclaim_at_s=15)
    r = run_single_host(params)
    print(r.summary())
    assert r.ok, r.verdict
    assert r.mismatches == 0 and r.verified > 100_000
    assert r.lost_pages == 0
    # continuous paging for the whole run
    assert r.page_ins_per_s > 500 and r.page_outs_per_s > 500
    # pages really freed: RSS of the RAM mapping stays under the limit plus slack
    slack_kb = r.rss_limit_kb // 10 + 4 * 1024
    assert r.max_rss_kb <= r.rss_limit_kb + slack_kb, (r.max_rss_kb, r.rss_limit_kb)
    # the reclaim happened during the run, and pages were pinned against it
    assert r.reclaim and r.reclaim["before"] > 0
    assert r.memfs["files"]["libvirt/qemu/1-oracle/pc.ram"]["pins"] > 0
    assert r.pages_per_read == pytest.approx(1.0, abs=0.05), "4 KiB page-ins by default"
