"""B2/B3/B6 in the lab: ``ipmigrate-bench migration --quick`` runs to its end.

One run of the CI configuration (4 hosts, the 512 MiB oracle guest split 3-way,
1 Gbit/s links): every operation ends done, the oracle sees no mismatch, and
every ratio is measured (present and positive). The targets of BENCHMARKS.md
are reported by the benchmark, not asserted here: a shared machine under TCG
cannot promise them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nova_ipmigrate.bench import migration
from nova_ipmigrate.cmd import bench
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_bench_migration_quick(workdir: Path, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    out = tmp_path / "migration.json"
    rc = bench.main(["migration", "--quick", "--link", "1gbit", "--json", str(out),
                     "--cache-dir", str(cache_dir()), "--workdir", str(workdir / "bench")])
    result = json.loads(out.read_text())
    print(migration.summary(result))
    assert rc == 0, result["problems"]
    assert result["ok"]
    assert result["oracle"]["ok"] and result["oracle"]["mismatches"] == 0, result["oracle"]
    assert all(result["operations"][name]["state"] == "done" for name in migration.OPS)
    assert set(result["ratios"]) == set(migration.TARGETS)
    missing = {k: v for k, v in result["ratios"].items() if not (v is not None and v > 0)}
    assert not missing, missing
    assert result["tcp"]["h2_h4"]["mbit_per_s"] > 0 and result["tcp"]["h4_h1"]["mbit_per_s"] > 0
    assert result["resplit"]["drained"], result["resplit"]
    for name in migration.OPS:
        counts = result["resent_invalidated"][name]
        assert counts["resent"] >= 0 and counts["invalidated"] >= 0
