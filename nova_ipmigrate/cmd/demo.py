"""``ipmigrate-demo``: the on-one-machine lab demo.

One host: boots the oracle guest with its RAM on memfs under a
resident limit small enough to force continuous paging, forces a memory-cgroup
reclaim mid-run, and prints page-in/page-out rates, page-in latency, QEMU's RSS
of the RAM mapping and the oracle's verdict. It then runs the same guest
without a limit (guest progress without paging), and with ``--compare-readahead``
the readahead/THP variants, side by side.

Several hosts (``--hosts N``): a split-memory instance across lab hosts, and with
``--scenario`` the IPmigrate operations on it while it runs (partial migration of
a sub-host, abort, killed destination, main-host migration, host drain,
reintegration), each with a progress bar, then the oracle's verdict and the
memory maps. Every lab host runs its own libvirtd and the guest is a libvirt
domain (``--no-libvirt``: a QEMU started directly; no main-host moves then).
The lab's control plane runs on h1 (RabbitMQ and ``ipmigrate-engine``): the
split and every operation are requests to the engine (``--no-control-plane``:
the agents are asked directly, no broker needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from nova_ipmigrate import conf
from nova_ipmigrate.cmd.daemon import exit_on_sigterm
from nova_ipmigrate.lab.singlehost import RunResult, Sample, SingleHostParams, run_single_host

CONF = conf.CONF


def _print_sample(s: Sample) -> None:
    p50 = "-" if s.p50_us is None else f"{s.p50_us:.0f}"
    p99 = "-" if s.p99_us is None else f"{s.p99_us:.0f}"
    print(f"  t={s.t:5.0f}s  resident {s.resident_pages * 4 / 1024:6.1f} MiB  "
          f"QEMU RSS {s.rss_kb / 1024:6.1f} MiB | page-ins {s.page_ins_per_s:6.0f}/s  "
          f"page-outs {s.page_outs_per_s:6.0f}/s | p50 {p50} us p99 {p99} us | "
          f"oracle {s.oracle_rate:7.0f} pages/s, {s.mismatches} mismatches", flush=True)


def _run(title: str, params: SingleHostParams, quiet: bool) -> RunResult:
    print(f"\n== {title}", flush=True)
    result = run_single_host(params, on_sample=None if quiet else _print_sample)
    print(result.summary(), flush=True)
    return result


def _split_demo(args: argparse.Namespace, base: SingleHostParams) -> int:
    from nova_ipmigrate.lab.multihost import ScenarioError, SplitParams, run_split
    from nova_ipmigrate.lab.scenario import SCENARIOS
    body = SCENARIOS[args.scenario] if args.scenario else None
    hosts_n = args.hosts
    subs = args.sub_hosts
    if body is not None:
        hosts_n = max(hosts_n, 4)
        subs = subs or 2
    params = SplitParams(**{**base.__dict__, "workdir": base.workdir / "split"},
                         hosts=hosts_n, link=args.link, split_after_s=args.split_after,
                         sub_hosts=subs, scenario=body, scenario_after_s=5.0,
                         control_plane=not args.no_control_plane, libvirt=not args.no_libvirt,
                         api=not args.no_control_plane,
                         substore_mb_by_host=({"h4": 64} if args.scenario == "engine-failures"
                                              else None))
    how = (f"split {args.split_after:.0f}s after the oracle filled its memory"
           if args.split_after is not None else "booted split")
    nsubs = subs or hosts_n - 1
    print(f"\n== split-memory instance: main host h1 + {nsubs} sub-host(s) of {hosts_n} "
          f"hosts, resident limit {args.limit_pct}%, {how}"
          + (f", scenario {args.scenario}" if body else "")
          + ("" if args.no_control_plane else "; control plane (RabbitMQ, ipmigrate-engine, "
             "ipmigrate-api) on h1")
          + ("" if args.no_libvirt else "; the guest is a libvirt domain"), flush=True)
    # While operations run, per-second samples would interleave with their progress bars.
    quiet = args.quiet or body is not None
    try:
        result, hosts = run_split(params, on_sample=None if quiet else _print_sample)
    except ScenarioError as exc:
        print(exc.result.summary())
        print(f"ipmigrate-demo: scenario {args.scenario} failed: {exc.cause}", file=sys.stderr)
        return 1
    print(result.summary())
    if "scenario" in hosts:
        from nova_ipmigrate.lab.scenario import report
        print(report(hosts["scenario"]))
    if hosts.get("engine_operations"):
        from nova_ipmigrate.engine.client import describe
        print("engine operations:")
        for op in hosts["engine_operations"]:
            print("  " + describe(op))
    print("pages by host: " + ", ".join(f"{h} {n}" for h, n in hosts["pages_by_host"].items()))
    print(hosts["memory_view"])
    print("memory map: " + ", ".join(hosts["memory_map"]))
    f = result.memfs["files"]
    for name, ram in f.items():
        print(f"{name}: remote page-ins {ram['remote_page_ins']}, remote page-outs "
              f"{ram['remote_page_outs']}, broken {ram['broken']}")
    if args.json:
        args.json.write_text(json.dumps({"split": result.to_dict(), "hosts": hosts}, indent=1))
    return 0 if result.ok else 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ipmigrate-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", action="append", default=[],
                    help="nova-ipmigrate configuration file(s)")
    ap.add_argument("--ram-mb", type=int, default=None,
                    help="guest RAM (MiB; default 256, 512 with --scenario)")
    ap.add_argument("--limit-pct", type=int, default=25,
                    help="resident limit, percent of guest RAM (default 25)")
    ap.add_argument("--seconds", type=int, default=60,
                    help="oracle run time after it filled its memory")
    ap.add_argument("--baseline-seconds", type=int, default=20,
                    help="run time of the comparison runs (0 disables them)")
    ap.add_argument("--reclaim-at", type=float, default=20.0,
                    help="force a memory-cgroup reclaim this many seconds into the paged run "
                         "(negative: never)")
    ap.add_argument("--readahead-kb", type=int, default=None,
                    help="prefetch window (default: [memfs] max_readahead_kb)")
    ap.add_argument("--allow-thp-readahead", action="store_true",
                    help="run QEMU without the MADV_HUGEPAGE shim")
    ap.add_argument("--compare-readahead", action="store_true",
                    help="also run with THP readahead allowed and with a 128 KiB window")
    ap.add_argument("--compare-victims", action="store_true",
                    help="also run a skewed oracle (90%% of accesses to 10%% of its pages) "
                         "with recency and with random victim selection")
    ap.add_argument("--hosts", type=int, default=1,
                    help="lab hosts: 1 = memfs on one host; N >= 2 = a split-memory "
                         "instance, main host h1 and sub-hosts h2..hN (namespaces)")
    ap.add_argument("--link", default=None,
                    help="with --hosts: tc rate of every host's link, e.g. 1gbit")
    ap.add_argument("--split-after", type=float, default=None,
                    help="with --hosts: boot a normal VM and split it (split migration) "
                         "this many seconds after the oracle filled its memory")
    ap.add_argument("--sub-hosts", type=int, default=None, metavar="N",
                    help="with --hosts: sub-hosts the VM starts with (h2..); the other "
                         "hosts are spares, destinations of part moves")
    ap.add_argument("--scenario", default=None,
                    choices=["sub-host-moves", "drain-reintegrate", "main-host-moves",
                             "full", "engine-failures", "operator-cli"],
                    help="run operations while the guest runs (needs 4 hosts: VM on h1, "
                         "split over h2 and h3, h4 spare): sub-host-moves = partial "
                         "migration h2->h4, an abort and a killed destination; "
                         "drain-reintegrate = drain h3, reintegrate onto h1; "
                         "main-host-moves = main-host moves with a killed destination "
                         "agent and libvirtd, h1->h4, reintegration onto h1, a reboot; "
                         "full = sub-host moves, the main host h1->h2, drain and "
                         "reintegration, with a memory map after each stage; "
                         "engine-failures = the engine and RabbitMQ killed and restarted "
                         "under running moves, and bad requests (needs the control plane); "
                         "operator-cli = the operator's maintenance of h2 and h3 through "
                         "the openstack CLI and ipmigrate-api (migrate --partial, list, "
                         "show, abort, host drain, reintegrate, memory show)")
    ap.add_argument("--no-libvirt", action="store_true",
                    help="with --hosts: run the guest as a QEMU started directly instead "
                         "of a libvirt domain (no libvirtd; no main-host moves)")
    ap.add_argument("--no-control-plane", action="store_true",
                    help="with --hosts: no RabbitMQ and engine; operations are asked of "
                         "the agents directly")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where logs and sockets go (default: <state_path>/lab/demo)")
    ap.add_argument("--json", type=Path, default=None, help="write all results as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no per-second lines")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    exit_on_sigterm()
    conf_args: list[str] = []
    for f in args.config_file:
        conf_args += ["--config-file", f]
    CONF(conf_args, project="nova-ipmigrate", default_config_files=[])
    if not 0 < args.limit_pct <= 100:
        print("ipmigrate-demo: --limit-pct must be in 1..100", file=sys.stderr)
        return 2
    if args.ram_mb is None:
        args.ram_mb = 512 if args.scenario else 256
    if args.ram_mb < 128 or args.seconds < 1:
        print("ipmigrate-demo: --ram-mb must be >= 128 and --seconds >= 1", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(CONF.state_path) / "lab" / "demo"
    base = SingleHostParams(
        workdir=workdir, cache_dir=Path(CONF.guest.cache_dir), ram_mb=args.ram_mb,
        resident_limit_pct=args.limit_pct, seconds=args.seconds,
        max_readahead_kb=(CONF.memfs.max_readahead_kb if args.readahead_kb is None
                          else args.readahead_kb),
        block_thp_readahead=not args.allow_thp_readahead,
        pin_resident_pages=CONF.memfs.pin_resident_pages,
        reclaim_at_s=args.reclaim_at if args.reclaim_at >= 0 else None,
        accel=CONF.guest.accel, kernel_package=CONF.guest.kernel_package,
        qemu_binary=CONF.guest.qemu_binary)
    runs: dict[str, RunResult] = {}
    if args.hosts >= 2 or args.scenario:
        return _split_demo(args, base)
    runs["paged"] = _run(f"guest RAM on memfs, resident limit {args.limit_pct}%", base,
                         args.quiet)
    short = replace(base, seconds=args.baseline_seconds, reclaim_at_s=None)
    if args.baseline_seconds > 0:
        runs["unlimited"] = _run("same guest, no resident limit (no paging)",
                                 replace(short, resident_limit_pct=0), True)
        if args.compare_readahead:
            runs["thp_readahead"] = _run(
                "paged, QEMU's MADV_HUGEPAGE left on (no shim)",
                replace(short, block_thp_readahead=False), True)
            runs["readahead_128k"] = _run("paged, 128 KiB prefetch window",
                                          replace(short, max_readahead_kb=128), True)
        if args.compare_victims:
            skewed = replace(short, hot_percent=90, hot_set_percent=10)
            runs["skewed_recency"] = _run("skewed oracle, recency victim selection",
                                          skewed, True)
            runs["skewed_random"] = _run("skewed oracle, random victim selection",
                                         replace(skewed, victim_policy="random"), True)
    print("\n== comparison")
    ref = runs["paged"]
    for name, r in runs.items():
        ratio = r.guest_pages_per_s / ref.guest_pages_per_s if ref.guest_pages_per_s else 0.0
        print(f"  {name:15s} guest {r.guest_pages_per_s:8.0f} pages/s ({ratio:4.2f}x paged)  "
              f"pages/READ {r.pages_per_read:5.2f}  page-ins {r.page_ins_per_s:6.0f}/s  "
              f"{'PASS' if r.ok else 'FAIL'} ({r.mismatches} mismatches)")
    if args.json:
        args.json.write_text(json.dumps({k: v.to_dict() for k, v in runs.items()}, indent=1))
        print(f"results written to {args.json}")
    return 0 if all(r.ok for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
