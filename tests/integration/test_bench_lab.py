"""B1/B5 across a lab link: the fabric and plain TCP measured between two host namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_fabric_across_a_shaped_lab_link() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    out = subprocess.run(
        [sys.executable, "-m", "nova_ipmigrate.cmd.bench", "fabric", "--quick", "--lab",
         "--link", "200mbit", "--bulk-mib", "16"],
        capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    assert result["settings"]["address"].startswith("10.254.")
    ratios = {k: v for k, v in result.items() if k.startswith("ratio")} or result.get("ratios")
    assert ratios, result.keys()
    # bandwidth-bound: both transports fill the 200 Mbit/s link (25 MB/s)
    plain = result["plain_tcp"]["1"]["MiB_per_s"]
    assert 15 < plain < 30, plain
    assert "page_in" in json.dumps(result) and "p99_us" in json.dumps(result)
