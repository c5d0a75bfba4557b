"""What the lab benchmarks share: ratios and verdicts, the guest's size, the command
line around a run (arguments, root check, work directory, JSON and summary)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova_ipmigrate.lab import tcpbulk
from nova_ipmigrate.lab.shaping import RateError, normalize_link


def oracle_mib(ram_mb: int) -> int:
    """The oracle's share of guest RAM: what the guest kernel leaves it. The lab's
    default (RAM less 96 MiB) gets the oracle OOM-killed in a 1024 MiB guest."""
    return ram_mb - max(96, ram_mb // 5)


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, None when either is missing or den is not positive."""
    if num is None or den is None or den <= 0:
        return None
    return num / den


def time_vs_ideal(seconds: float | None, nbytes: float | None,
                  rate_bytes_s: float | None) -> float | None:
    """Measured time / the ideal time to move ``nbytes`` at ``rate_bytes_s``."""
    return ratio(seconds, ratio(nbytes, rate_bytes_s))


def meets(value: float | None, target: tuple[str, float]) -> str:
    if value is None:
        return "n/a"
    op, limit = target
    ok = value <= limit if op == "<=" else value >= limit
    return "PASS" if ok else "BELOW"


def rate_record(r: tcpbulk.TransferRate) -> dict[str, Any]:
    """A plain TCP measurement as the JSON shows it."""
    return {"bytes": r.bytes, "seconds": round(r.seconds, 4),
            "bytes_per_s": round(r.bytes / r.seconds) if r.seconds > 0 else None,
            "mbit_per_s": round(r.mbit_per_s, 1)}


def cache_dir(arg: Path | None) -> Path:
    """The guest image cache: the argument, $IPMIGRATE_CACHE_DIR, else [guest] cache_dir."""
    if arg is not None:
        return arg
    env = os.environ.get("IPMIGRATE_CACHE_DIR")
    if env:
        return Path(env)
    from nova_ipmigrate import conf
    conf.CONF([], project="nova-ipmigrate", default_config_files=[])
    return Path(conf.CONF.guest.cache_dir)


def add_lab_arguments(parser: argparse.ArgumentParser, quick_help: str,
                      ram_help: str) -> None:
    """--quick, --link, --ram-mb, --json, --cache-dir, --workdir."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--link", default="1gbit",
                        help="tc rate of every host's link (default 1gbit; 'none': unshaped)")
    parser.add_argument("--ram-mb", type=int, default=None, help=ram_help)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the JSON result to this file")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="the guest image cache (default: $IPMIGRATE_CACHE_DIR, else "
                        "[guest] cache_dir)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep logs and serial consoles here (default: a temporary "
                        "directory, removed after a successful run)")


def lab_overrides(prog: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The settings the common arguments change; None (after saying why) if the run
    cannot go ahead: a bad --link, or not root."""
    try:
        link = normalize_link(args.link)
    except RateError as exc:
        print(f"{prog}: --link: {exc}", file=sys.stderr)
        return None
    if os.geteuid() != 0:
        print(f"{prog}: needs root (lab namespaces, FUSE mounts, tc, memory cgroups, "
              f"libvirtd)", file=sys.stderr)
        return None
    overrides: dict[str, Any] = {"link": link}
    if args.ram_mb is not None:
        overrides["ram_mb"] = args.ram_mb
    return overrides


def run_and_report(args: argparse.Namespace, prefix: str,
                   run: Callable[[Path, Path], dict[str, Any]],
                   summary: Callable[[dict[str, Any]], str]) -> int:
    """``run(cache, workdir)``, then the JSON (stdout, --json), the summary (stderr);
    a temporary work directory is removed after a successful run. Exit status 0 when
    the result is ``ok``."""
    cache = cache_dir(args.cache_dir)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run(cache, workdir)
    result["workdir"] = str(workdir)
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print(summary(result), file=sys.stderr)
    if args.workdir is None:
        if result["ok"]:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return 0 if result["ok"] else 1
