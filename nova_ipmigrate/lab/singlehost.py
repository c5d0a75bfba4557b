"""One host, one guest: QEMU whose RAM is a file on memfs, under a resident limit.

Owns the single-host run behind ``ipmigrate-demo`` and the memfs integration
test: start an ``ipmigrate-memfs`` daemon, prepare the guest's RAM file with
its resident limit, boot the oracle guest in a memory cgroup, sample paging
rates, page-in latency, QEMU's RSS of the RAM mapping and the oracle's
progress, optionally force a memory-cgroup reclaim mid-run, and return a
summary. Everything it starts is stopped again, also on failure.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nova_ipmigrate.guest.image import ensure_guest_image, kernel_cmdline
from nova_ipmigrate.guest.serial import OracleMonitor
from nova_ipmigrate.lab.memfsd import MemfsDaemon
from nova_ipmigrate.memfs.metrics import LatencyHistogram
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.qemu.memcg import MemoryCgroup
from nova_ipmigrate.qemu.runner import QemuConfig, QemuProcess
from nova_ipmigrate.qemu.shim import ensure_nohuge_shim

LOG = logging.getLogger(__name__)
MIB = 2**20
#: libvirt's layout under memory_backing_dir, so the demo looks like production
RAM_PATH = "libvirt/qemu/1-oracle/pc.ram"


@dataclass
class SingleHostParams:
    workdir: Path
    cache_dir: Path
    ram_mb: int = 256
    #: resident limit as a percentage of guest RAM; 0 = no limit (no paging)
    resident_limit_pct: int = 25
    #: MiB the oracle owns; default: guest RAM less room for the guest kernel
    oracle_mib: int | None = None
    seconds: int = 60
    report_s: int = 5
    max_readahead_kb: int = 0
    block_thp_readahead: bool = True
    pin_resident_pages: bool = True
    #: force a memory-cgroup reclaim this many seconds after the oracle filled its memory
    reclaim_at_s: float | None = None
    page_store_mb: int = 1024
    accel: str = "tcg"
    kernel_package: str = "linux-image-amd64"
    qemu_binary: str = "qemu-system-x86_64"
    sample_s: float = 1.0
    victim_policy: str = "recency"
    #: skewed oracle: this percentage of random accesses go to the hot set
    hot_percent: int = 0
    #: the hot set, as a percentage of the oracle's pages
    hot_set_percent: int = 10

    @property
    def limit_bytes(self) -> int:
        lim = self.ram_mb * MIB * self.resident_limit_pct // 100
        return lim - lim % PAGE_SIZE

    def cmdline(self) -> str:
        return kernel_cmdline(self.oracle_size_mib, self.seconds, report_s=self.report_s,
                              hot_percent=self.hot_percent,
                              hot_set_percent=self.hot_set_percent)

    @property
    def oracle_size_mib(self) -> int:
        return self.oracle_mib if self.oracle_mib is not None else max(16, self.ram_mb - 96)


@dataclass
class Sample:
    t: float
    resident_pages: int
    rss_kb: int
    page_ins_per_s: float
    page_outs_per_s: float
    p50_us: float | None
    p99_us: float | None
    oracle_rate: float
    mismatches: int


@dataclass
class RunResult:
    ram_mb: int
    limit_mb: float
    oracle_mib: int
    max_readahead_kb: int
    block_thp_readahead: bool
    verdict: str
    ok: bool
    mismatches: int
    verified: int
    duration_s: float
    page_ins_per_s: float
    page_outs_per_s: float
    page_in_p50_us: float | None
    page_in_p99_us: float | None
    pages_per_read: float
    guest_pages_per_s: float
    max_rss_kb: int
    mean_rss_kb: float
    rss_limit_kb: int
    lost_pages: int
    refetched_pages: int
    throttled_page_ins: int
    reclaim: dict[str, Any] = field(default_factory=dict)
    #: what the run's timed actions returned, by name
    events: dict[str, Any] = field(default_factory=dict)
    memfs: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} us"
        lines = [
            f"guest {self.ram_mb} MiB, oracle {self.oracle_mib} MiB, resident limit "
            f"{self.limit_mb:.0f} MiB, readahead {self.max_readahead_kb} KiB, THP readahead "
            f"{'blocked' if self.block_thp_readahead else 'allowed'}",
            f"page-ins/s {self.page_ins_per_s:.0f}   page-outs/s {self.page_outs_per_s:.0f}   "
            f"pages per READ {self.pages_per_read:.2f}",
            f"page-in latency p50 {us(self.page_in_p50_us)}   p99 {us(self.page_in_p99_us)}",
            f"guest progress {self.guest_pages_per_s:.0f} pages/s verified+rewritten",
            f"QEMU RSS of the RAM mapping: max {self.max_rss_kb / 1024:.1f} MiB, mean "
            f"{self.mean_rss_kb / 1024:.1f} MiB (limit "
            + (f"{self.rss_limit_kb / 1024:.0f} MiB)" if self.rss_limit_kb else "none)"),
            f"lost pages {self.lost_pages}, reclaimed-and-refetched {self.refetched_pages}",
        ]
        if self.reclaim:
            r = self.reclaim
            lines.append(f"forced memcg reclaim at t={r['t']:.0f}s: usage "
                         f"{r['before'] / MIB:.1f} -> {r['after'] / MIB:.1f} MiB")
        lines.append(self.verdict)
        return "\n".join(lines)


def run_single_host(p: SingleHostParams,
                    on_sample: Callable[[Sample], None] | None = None) -> RunResult:
    """Boot the oracle guest on memfs and run it to completion."""
    p.workdir.mkdir(parents=True, exist_ok=True)
    image = ensure_guest_image(p.cache_dir, p.kernel_package)
    shim = ensure_nohuge_shim(p.cache_dir) if p.block_thp_readahead else None
    daemon = MemfsDaemon(p.workdir, {
        "max_readahead_kb": p.max_readahead_kb, "page_store_mb": p.page_store_mb,
        "pin_resident_pages": p.pin_resident_pages, "reader_threads": 3,
        "victim_policy": p.victim_policy})
    serial = p.workdir / "serial.log"
    serial.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        daemon.start()
        stack.callback(daemon.stop)
        daemon.call("create", path=RAM_PATH, size=p.ram_mb * MIB, resident_limit=p.limit_bytes)
        memcg = MemoryCgroup(f"ipmigrate-demo-{uuid.uuid4().hex[:8]}")
        stack.callback(memcg.destroy)
        qemu = QemuProcess(QemuConfig(
            ram_mb=p.ram_mb, ram_path=daemon.mountpoint / RAM_PATH, kernel=image.kernel,
            initrd=image.initrd,
            append=p.cmdline(), serial_log=serial, qmp_socket=p.workdir / "qmp.sock",
            accel=p.accel, block_thp_readahead=p.block_thp_readahead, shim_path=shim,
            memcg=memcg, qemu_binary=p.qemu_binary))
        qemu.start()
        stack.callback(qemu.stop)
        return _monitor(p, daemon, qemu, memcg, OracleMonitor(serial), on_sample)
    raise AssertionError("unreachable")


def _file_stats(stats: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, Any] = stats["files"]
    return files.get(RAM_PATH) or next(iter(files.values()), {})


#: an action run once, ``after_s`` seconds after the oracle filled its memory
Action = tuple[float, str, Callable[[], dict[str, Any]]]


class Guest(Protocol):
    """What a run watches of its guest: a QemuProcess, or a lab libvirt domain."""

    def alive(self) -> bool: ...

    def ram_mapping_rss_kb(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


class StatsSource(Protocol):
    """Where a run reads memfs statistics: a daemon, or the VM's current main host."""

    def stats(self) -> dict[str, Any]: ...


def _monitor(p: SingleHostParams, daemon: StatsSource, qemu: Guest, memcg: MemoryCgroup,
             oracle: OracleMonitor, on_sample: Callable[[Sample], None] | None,
             actions: list[Action] | None = None) -> RunResult:
    t0 = time.monotonic()
    # boot and fill take a while under TCG; the run itself is p.seconds
    deadline = t0 + p.seconds + 240
    prev_t, prev = t0, _file_stats(daemon.stats())
    prev_hist = LatencyHistogram()
    samples: list[Sample] = []
    rss: list[int] = []
    reclaim: dict[str, Any] = {}
    pending = sorted(actions or [], key=lambda a: a[0])
    events: dict[str, Any] = {}
    filled_at: float | None = None
    paging_start: dict[str, Any] | None = None
    paging_start_t = 0.0
    next_sample = t0 + p.sample_s
    while True:
        time.sleep(0.25)
        oracle.update()
        now = time.monotonic()
        if qemu.alive():
            rss.append(qemu.ram_mapping_rss_kb())
        if oracle.filled and filled_at is None:
            filled_at = now
            paging_start = _file_stats(daemon.stats())
            paging_start_t = now
        if (p.reclaim_at_s is not None and filled_at is not None and not reclaim
                and now - filled_at >= p.reclaim_at_s):
            before = memcg.usage_bytes()
            freed = memcg.force_reclaim()
            reclaim = {"t": now - t0, "before": before, "after": memcg.usage_bytes(),
                       "freed": freed}
            LOG.info("forced memcg reclaim: %s", reclaim)
        while pending and filled_at is not None and now - filled_at >= pending[0][0]:
            _after, name, fn = pending.pop(0)
            events[name] = {"t": now - t0, **fn()}
            LOG.info("%s at t=%.1fs: %s", name, now - t0, events[name])
        if now >= next_sample:
            next_sample = now + p.sample_s
            stats = daemon.stats()
            cur = _file_stats(stats)
            hist = LatencyHistogram(stats["read_latency_hist"])
            dt = now - prev_t
            window = hist - prev_hist
            s = Sample(now - t0, cur.get("resident", 0), rss[-1] if rss else 0,
                       (cur.get("page_ins", 0) - prev.get("page_ins", 0)) / dt,
                       (cur.get("page_outs", 0) - prev.get("page_outs", 0)) / dt,
                       window.percentile_us(0.5), window.percentile_us(0.99),
                       oracle.last_rate, oracle.mismatches)
            samples.append(s)
            if on_sample:
                on_sample(s)
            prev_t, prev, prev_hist = now, cur, hist
        if oracle.done or oracle.kernel_panic or not qemu.alive() or now > deadline:
            break
    end = time.monotonic()
    qemu.wait(30)
    oracle.update()
    stats = daemon.stats()
    cur = _file_stats(stats)
    verdict = oracle.verdict()
    hist = LatencyHistogram(stats["read_latency_hist"])
    start = paging_start or {}
    span = max(1e-6, end - (paging_start_t or t0))
    progress = [pr.rate for pr in oracle.progress if pr.rate > 0]
    text = verdict.text
    if not oracle.done:
        text = (f"oracle did not finish: {'guest panic' if oracle.kernel_panic else ''}"
                f"{'QEMU exited' if not qemu.alive() else 'timeout'}; {text}")
    return RunResult(
        ram_mb=p.ram_mb, limit_mb=p.limit_bytes / MIB, oracle_mib=p.oracle_size_mib,
        max_readahead_kb=p.max_readahead_kb, block_thp_readahead=p.block_thp_readahead,
        verdict=text, ok=verdict.ok, mismatches=verdict.mismatches, verified=verdict.verified,
        duration_s=end - t0,
        page_ins_per_s=(cur.get("page_ins", 0) - start.get("page_ins", 0)) / span,
        page_outs_per_s=(cur.get("page_outs", 0) - start.get("page_outs", 0)) / span,
        page_in_p50_us=hist.percentile_us(0.5), page_in_p99_us=hist.percentile_us(0.99),
        pages_per_read=cur.get("page_ins", 0) / max(1, hist.total),
        guest_pages_per_s=sum(progress) / len(progress) if progress else 0.0,
        max_rss_kb=max(rss, default=0), mean_rss_kb=sum(rss) / len(rss) if rss else 0.0,
        rss_limit_kb=p.limit_bytes // 1024, lost_pages=cur.get("lost", 0),
        refetched_pages=cur.get("refetched", 0),
        throttled_page_ins=stats.get("throttled_page_ins", 0), reclaim=reclaim, events=events,
        memfs={k: v for k, v in stats.items() if k != "read_latency_hist"}, samples=samples)
