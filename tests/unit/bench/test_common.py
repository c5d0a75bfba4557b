"""The benchmarks' shared command-line handling and helpers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.bench import common


def _args(tmp_path: Path, **kw: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    common.add_lab_arguments(parser, "quick", "ram")
    ns = parser.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(common.os, "geteuid", lambda: 0)
    assert common.lab_overrides("p", _args(tmp_path, ram_mb=384)) == {"link": "1gbit",
                                                                      "ram_mb": 384}
    assert common.lab_overrides("p", _args(tmp_path, link="fast")) is None
    assert "--link" in capsys.readouterr().err
    monkeypatch.setattr(common.os, "geteuid", lambda: 1000)
    assert common.lab_overrides("p", _args(tmp_path)) is None
    assert "needs root" in capsys.readouterr().err


@pytest.mark.parametrize("ok", [True, False])
def test_run_and_report(tmp_path: Path, ok: bool, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    args = _args(tmp_path, json=out, cache_dir=tmp_path, workdir=tmp_path / "w")
    rc = common.run_and_report(args, "x-", lambda cache, wd: {"ok": ok, "cache": str(cache)},
                               lambda r: f"SUMMARY {r['ok']}")
    assert rc == (0 if ok else 1)
    assert json.loads(out.read_text())["workdir"] == str(tmp_path / "w")
    assert f"SUMMARY {ok}" in capsys.readouterr().err
    assert (tmp_path / "w").is_dir()        # a given work directory is kept


def test_meets_and_ratio() -> None:
    assert common.meets(1.0, ("<=", 1.1)) == "PASS" and common.meets(None, ("<=", 1)) == "n/a"
    assert common.meets(0.5, (">=", 0.8)) == "BELOW"
    assert common.ratio(1, 0) is None and common.time_vs_ideal(2.0, 100, 100) == 2.0
    assert common.oracle_mib(1024) == 820 and common.oracle_mib(256) == 160
