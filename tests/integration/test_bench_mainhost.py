"""B4 in the lab: ``ipmigrate-bench mainhost --quick`` runs to its end.

The CI configuration: a plain libvirt live migration of the 384 MiB oracle guest
(not split) between two hosts, then the same guest split 3-way whose main host
moves twice (h1 -> h4 -> h1), 1 Gbit/s links. Every move ends done, the split
guest's oracle sees no mismatch, and every figure is measured. The targets of
BENCHMARKS.md are reported, not asserted (TCG on a shared 2-core machine).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nova_ipmigrate.bench import mainhost
from nova_ipmigrate.cmd import bench
from nova_ipmigrate.lab import libvirt
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_bench_mainhost_quick(workdir: Path, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    if not libvirt.available():
        pytest.skip("needs libvirt-daemon-system (bindep.txt)")
    out = tmp_path / "mainhost.json"
    rc = bench.main(["mainhost", "--quick", "--link", "1gbit", "--json", str(out),
                     "--cache-dir", str(cache_dir()), "--workdir", str(workdir / "bench")])
    result = json.loads(out.read_text())
    print(mainhost.summary(result))
    assert rc == 0 and result["ok"], result["problems"]
    split = result["split"]
    assert split["oracle"]["ok"] and split["oracle"]["mismatches"] == 0, split["oracle"]
    assert [m["state"] for m in split["moves"]] == ["done", "done"]
    assert split["guest_hosts"] == ["h1", "h4", "h1"]
    for m in split["moves"]:
        assert m["downtime_ms"] > 0 and m["time_vs_ideal"] > 0 and m["pull_bytes"] > 0, m
    assert all(v is not None and v > 0 for v in result["ratios"].values()), result["ratios"]
    plain = result["plain"]
    assert plain["ok"] and plain["downtime_ms"] is not None, plain.get("error")
    assert plain["guest_hosts"] == ["h1", "h2"]
    assert result["side_by_side"]["total_split_vs_plain"] > 0
