"""Part moves of a split VM in the lab: 4 hosts, the 512 MiB oracle guest split 3-way.

The guest runs on h1 with h2 and h3 as its sub-hosts (25% resident on h1), h4
is a spare. While the oracle writes and verifies its memory all the time, the
scenarios of ``lab/scenario.py`` move parts: h2's part to h4, an operator abort
mid-transfer, a destination agent killed mid-transfer (``sub_host_moves``);
then a drain of h3 and the reintegration of the whole VM onto h1
(``drain_and_reintegrate``). Each step checks where the pages are; the guest
must end with 0 mismatches.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.lab import scenario
from nova_ipmigrate.lab.multihost import SplitParams, run_split
from tests.integration.conftest import QUICK, cache_dir

pytestmark = pytest.mark.integration


def _run(workdir: Path, body: Any) -> tuple[Any, dict[str, Any]]:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    p = SplitParams(workdir=workdir, cache_dir=cache_dir(), ram_mb=512, resident_limit_pct=25,
                    seconds=45 if QUICK else 90, hosts=4, sub_hosts=2,
                    lab_prefix=f"ipp{os.getpid() % 10000}", scenario=body,
                    scenario_after_s=5, fetch_timeout=5, page_store_mb=1024)
    r, extra = run_split(p)
    print(r.summary(), extra["pages_by_host"], extra.get("scenario"))
    assert r.ok, r.verdict
    assert r.mismatches == 0 and r.verified > 10_000
    f = r.memfs["files"]["libvirt/qemu/1-oracle/pc.ram"]
    assert f["lost"] == 0 and not f["broken"], f
    return r, extra


def test_sub_host_partial_migration_abort_and_killed_destination(workdir: Path) -> None:
    r, extra = _run(workdir, scenario.sub_host_moves)
    s = extra["scenario"]
    mig = s["partial_migration"]["progress"]
    assert mig["switched"] > 1000, mig
    # the guest kept paging during the move: pages left and reached the source
    assert s["abort"]["state"] == "aborted"
    assert s["killed_destination"]["state"] == "failed"
    assert r.events["scenario"]["t"] < r.samples[-1].t, "the scenario ran while the VM ran"


def test_drain_and_reintegration_onto_the_main_host(workdir: Path) -> None:
    _r, extra = _run(workdir, scenario.drain_and_reintegrate)
    s = extra["scenario"]
    assert s["drain"]["ops"] and all(o["state"] == "done" for o in s["drain"]["ops"])
    assert s["reintegration"]["state"] == "done"
    assert len(s["reintegration"]["parts"]) == 2, "both remaining parts came home in parallel"
