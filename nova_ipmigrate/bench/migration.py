"""B2, B3 and B6: partial migration and reintegration of a split VM, measured against
the link's limit and against the naive baselines, with the guest's progress meanwhile.

One lab run (root): 4 hosts as namespaces, every host's link shaped to ``--link``
(default 1gbit). The oracle guest (1024 MiB; 512 MiB with ``--quick``) runs on h1
with 25% of its RAM resident there and the rest split over h2 and h3 (a 3-way
split); h4 is a spare. The oracle prints its progress every second. About 10 s
after it filled its memory, while it keeps writing and verifying it, one scenario
runs these steps in order (no new step starts once the guest stopped):

R    plain TCP bulk rate, one stream for 2 s, h2 -> h4 and h4 -> h1: the limit of
     the links the moves below use, measured in the same run over the same shaped
     links (the guest's own paging traffic shares them, as it shares them with the
     moves).
B2   partial migration of h2's part to h4 (strategy ipmigrate: h2 copies its
     part straight to h4, the main host only directs):
       time ratio  = operation time / (part bytes / R(h2->h4))      target <= 1.10
       bytes ratio = bytes that arrived at h4's fabric during the operation
                     (headers included) / part bytes               target <= 1.05
B2 naive  h3's part to h2 without IPmigrate (strategy naive): the whole VM is
     gathered into h1, then split again without h3.
       speedup = naive seconds per part byte / IPmigrate seconds per part byte
                                                                   target >= 2
     (both raw times and part sizes are in the JSON).
B3   reintegration onto h1 (strategy ipmigrate: every holder sends its part to
     h1, in parallel):
       time ratio = operation time / (bytes not on h1 before / R(h4->h1))
                                                                   target <= 1.15
     Then the VM is split again over h2 and h4 (control op ``split``, same
     resident limit) and the benchmark waits until h1's local store has drained
     to them (bounded wait; its time is reported).
B3 naive  reintegration by gathering (strategy naive): h1 pulls every part
     through its page-in path, one holder after the other.
       speedup = naive seconds per byte moved / IPmigrate seconds per byte moved
                                                                   target >= 2
     With the main host as the target, as here, both move the same bytes over the
     same bottleneck, h1's ingress link, so a speedup of about 1x is expected: the
     >= 2x target applies to reintegration onto another host, which needs the
     main-host move (a later issue). The figure is reported, not a failure.
B6   guest progress (oracle pages verified per second; the serial console is
     read every 0.2 s, each new progress line timed on arrival) during each
     operation / during the ~8 s before the first one (after R, with nothing
     else running). An operation shorter than 2 s is measured over a 2 s window
     centred on it (``widened`` in the JSON, noted in the summary).
                                                                   target >= 0.8

Every operation's re-sent and invalidated page counts (the consistency
protocol's work while the guest writes) are reported, as is the oracle's
verdict: the exit status is 1 if the oracle saw any mismatch or failed, or if
any operation did not end ``done``. Targets are reported (PASS/BELOW), not
enforced. JSON on stdout (and in ``--json FILE``), a summary on stderr.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nova_ipmigrate.bench.common import (
    add_lab_arguments,
    lab_overrides,
    meets,
    oracle_mib,
    rate_record,
    ratio,
    run_and_report,
    time_vs_ideal,
)
from nova_ipmigrate.guest.serial import OracleMonitor
from nova_ipmigrate.lab import tcpbulk
from nova_ipmigrate.lab.hosts import Lab
from nova_ipmigrate.lab.multihost import LabContext, ScenarioError, SplitParams, run_split
from nova_ipmigrate.lab.progress import ProgressPrinter
from nova_ipmigrate.lab.scenario import LabOps

LOG = logging.getLogger(__name__)
PAGE = 4096
MIB = 2**20
#: plain TCP ports of the R measurements (the agents' fabric listens on 47800)
TCP_PORTS = (47811, 47812)
#: the operations, in the order the scenario runs them
OPS = ("b2_ipmigrate", "b2_naive", "b3_ipmigrate", "b3_naive")
OP_TITLES = {
    "b2_ipmigrate": "B2 partial migration h2->h4 (ipmigrate)",
    "b2_naive": "B2 naive h3->h2 (gather, split again)",
    "b3_ipmigrate": "B3 reintegration onto h1 (ipmigrate)",
    "b3_naive": "B3 naive reintegration (gather via h1)",
}
#: ratio name -> (comparison, target), from BENCHMARKS.md
TARGETS: dict[str, tuple[str, float]] = {
    "b2_time_vs_ideal": ("<=", 1.10),
    "b2_bytes_vs_part": ("<=", 1.05),
    "b2_speedup_vs_naive": (">=", 2.0),
    "b3_time_vs_ideal": ("<=", 1.15),
    "b3_speedup_vs_naive": (">=", 2.0),
    **{f"b6_{op}_during_vs_before": (">=", 0.8) for op in OPS},
}


@dataclass(frozen=True)
class Settings:
    ram_mb: int = 1024
    #: the oracle's run time after its fill: long enough for every step
    seconds: int = 160
    link: str | None = "1gbit"
    resident_limit_pct: int = 25
    #: the scenario starts this long after the fill
    scenario_after_s: float = 10.0
    #: the "before" window of B6: the guest alone, right before the first operation
    before_s: float = 8.0
    tcp_seconds: float = 2.0
    #: B6 windows are at least this long (centred on the operation)
    min_window_s: float = 2.0
    #: the bounded wait for h1's store to drain after the re-split
    drain_timeout_s: float = 120.0
    #: the re-split has drained when at most this many pages are left in h1's store
    drained_pages: int = 256

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        return cls(**{"ram_mb": 512, "seconds": 80, "drain_timeout_s": 60.0, **overrides})


# -- pure helpers (unit-tested) ---------------------------------------------------------


def speedup_per_byte(naive_s: float | None, naive_bytes: float | None,
                     ipm_s: float | None, ipm_bytes: float | None) -> float | None:
    """(naive seconds per byte) / (IPmigrate seconds per byte)."""
    return ratio(ratio(naive_s, naive_bytes), ratio(ipm_s, ipm_bytes))


Sample = tuple[float, int]  # (host seconds since the sampler started, pages verified)


def verified_at(samples: Sequence[Sample], t: float) -> float | None:
    """Pages verified at time ``t``, interpolated linearly between samples; None
    outside the sampled span."""
    if not samples or t < samples[0][0] or t > samples[-1][0]:
        return None
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, t)
    if times[i] == t:
        return float(samples[i][1])
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def window_rate(samples: Sequence[Sample], start: float, end: float,
                min_s: float = 0.0) -> dict[str, Any]:
    """The guest's rate (pages verified per second) over [start, end]; a window shorter
    than ``min_s`` is widened to ``min_s`` around its centre."""
    widened = end - start < min_s
    if widened:
        mid = (start + end) / 2
        start, end = mid - min_s / 2, mid + min_s / 2
    a, b = verified_at(samples, start), verified_at(samples, end)
    out: dict[str, Any] = {"start": round(start, 3), "end": round(end, 3),
                           "seconds": round(end - start, 3), "widened": widened,
                           "pages_verified": None, "pages_per_s": None}
    if a is not None and b is not None and end > start:
        out.update(pages_verified=round(b - a), pages_per_s=round((b - a) / (end - start), 1))
    return out


def _get(d: dict[str, Any] | None, key: str) -> Any:
    return None if d is None else d.get(key)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def figures(raw: dict[str, Any], min_window_s: float = 2.0) -> dict[str, Any]:
    """The ratios and B6 windows from what the scenario recorded (see :func:`scenario`)."""
    tcp = raw.get("tcp", {})
    ops: dict[str, Any] = raw.get("ops", {})
    r24 = _get(tcp.get("h2_h4"), "bytes_per_s")
    r41 = _get(tcp.get("h4_h1"), "bytes_per_s")
    b2, b2n = ops.get("b2_ipmigrate"), ops.get("b2_naive")
    b3, b3n = ops.get("b3_ipmigrate"), ops.get("b3_naive")
    ratios: dict[str, float | None] = {
        "b2_time_vs_ideal": time_vs_ideal(_get(b2, "seconds"), _get(b2, "part_bytes"), r24),
        "b2_bytes_vs_part": ratio(_get(b2, "dest_fabric_bytes_in"), _get(b2, "part_bytes")),
        "b2_speedup_vs_naive": speedup_per_byte(
            _get(b2n, "seconds"), _get(b2n, "part_bytes"),
            _get(b2, "seconds"), _get(b2, "part_bytes")),
        "b3_time_vs_ideal": time_vs_ideal(_get(b3, "seconds"), _get(b3, "bytes_moved"), r41),
        "b3_speedup_vs_naive": speedup_per_byte(
            _get(b3n, "seconds"), _get(b3n, "bytes_moved"),
            _get(b3, "seconds"), _get(b3, "bytes_moved")),
    }
    samples = [(float(t), int(v)) for t, v in raw.get("guest_samples", [])]
    window = raw.get("before_window")
    before = window_rate(samples, window[0], window[1]) if window else None
    b6: dict[str, Any] = {"before": before, "during": {}}
    for name in OPS:
        rec = ops.get(name)
        if rec is None or rec.get("window") is None:
            ratios[f"b6_{name}_during_vs_before"] = None
            continue
        during = window_rate(samples, rec["window"][0], rec["window"][1], min_window_s)
        b6["during"][name] = during
        ratios[f"b6_{name}_during_vs_before"] = ratio(during["pages_per_s"],
                                                      _get(before, "pages_per_s"))
    return {"ratios": {k: _rounded(v) for k, v in ratios.items()}, "b6": b6}


def _mib(nbytes: float | None) -> str:
    return "?" if nbytes is None else f"{nbytes / MIB:.1f} MiB"


def _sec(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.2f} s"


def _fig(value: float | None, name: str, suffix: str = "") -> str:
    op, target = TARGETS[name]
    shown = "n/a" if value is None else f"{value:.2f}{suffix}"
    return f"{shown} (target {op} {target:g}{suffix}: {meets(value, TARGETS[name])})"


def summary(result: dict[str, Any]) -> str:
    """The human summary: one line per figure, with its target and PASS/BELOW."""
    s = result["settings"]
    ratios = result["ratios"]
    ops = result["operations"]
    tcp = result["tcp"]

    def mbit(key: str) -> str:
        r = tcp.get(key)
        return "n/a" if not r else f"{r['bytes_per_s'] * 8 / 1e6:.0f} Mbit/s"

    def op(name: str) -> dict[str, Any]:
        rec: dict[str, Any] = ops.get(name) or {}
        return rec

    b2, b2n, b3, b3n = (op(n) for n in OPS)
    lines = [
        f"migration benchmark: {s['ram_mb']} MiB guest, {s['resident_limit_pct']}% resident "
        f"on h1, split over h2 and h3, h4 spare; links {s['link'] or 'unshaped'}",
        f"  R plain TCP, 1 stream, {s['tcp_seconds']:g} s: h2->h4 {mbit('h2_h4')}, "
        f"h4->h1 {mbit('h4_h1')}",
        f"  B2 partial migration h2->h4: {_mib(b2.get('part_bytes'))} in "
        f"{_sec(b2.get('seconds'))}; time/ideal "
        f"{_fig(ratios['b2_time_vs_ideal'], 'b2_time_vs_ideal')}",
        f"  B2 bytes at h4 / part bytes: {_fig(ratios['b2_bytes_vs_part'], 'b2_bytes_vs_part')}",
        f"  B2 naive h3->h2 (gather into h1, split again): {_mib(b2n.get('part_bytes'))} in "
        f"{_sec(b2n.get('seconds'))}; IPmigrate speedup per part byte "
        f"{_fig(ratios['b2_speedup_vs_naive'], 'b2_speedup_vs_naive', 'x')}",
        f"  B3 reintegration onto h1: {_mib(b3.get('bytes_moved'))} in "
        f"{_sec(b3.get('seconds'))}; time/ideal "
        f"{_fig(ratios['b3_time_vs_ideal'], 'b3_time_vs_ideal')}",
    ]
    rs = result.get("resplit") or {}
    if rs:
        lines.append(
            f"  re-split over h2 and h4: {rs.get('pages_to_move', 0) * PAGE / MIB:.1f} MiB to "
            f"move, h1's store {'drained' if rs.get('drained') else 'NOT drained'} "
            f"({rs.get('stored_left')} pages left) in {_sec(rs.get('seconds'))}")
    lines.append(
        f"  B3 naive reintegration (gather through h1): {_mib(b3n.get('bytes_moved'))} in "
        f"{_sec(b3n.get('seconds'))}; IPmigrate speedup per byte "
        f"{_fig(ratios['b3_speedup_vs_naive'], 'b3_speedup_vs_naive', 'x')}; ~1x expected "
        f"with the main host as target (same bytes over h1's ingress)")
    b6 = result["b6"]
    before = b6.get("before") or {}
    lines.append(f"  B6 guest before the operations: {before.get('pages_per_s', 'n/a')} pages/s "
                 f"over {before.get('seconds', '?')} s")
    for name in OPS:
        during = b6["during"].get(name) or {}
        note = (f" [op shorter than {s['min_window_s']:g} s: window widened to "
                f"{during['seconds']:g} s]" if during.get("widened") else "")
        key = f"b6_{name}_during_vs_before"
        lines.append(f"  B6 during {OP_TITLES[name]}: {during.get('pages_per_s', 'n/a')} "
                     f"pages/s, during/before {_fig(ratios[key], key)}{note}")
    counts = ", ".join(f"{name} {op(name).get('resent', '?')}/{op(name).get('invalidated', '?')}"
                       for name in OPS)
    lines.append(f"  re-sent/invalidated pages: {counts}")
    states = ", ".join(f"{name} {op(name).get('state', 'not run')}" for name in OPS)
    lines.append(f"  operations: {states}")
    for problem in result.get("problems", []):
        lines.append(f"  PROBLEM: {problem}")
    o = result["oracle"]
    lines.append(f"  {o['verdict']}")
    lines.append(f"  result: {'OK' if result['ok'] else 'FAILED'}")
    return "\n".join(lines)


# -- the scenario -----------------------------------------------------------------------


class GuestSampler:
    """Reads the oracle's serial console every ``interval`` s in a thread and keeps
    (host time, pages verified) for each new progress line."""

    def __init__(self, serial: Path, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor = OracleMonitor(serial)
        self.interval = interval
        self.clock = clock
        self.t0 = clock()
        self.samples: list[Sample] = []
        self._seen = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.clock() - self.t0

    def poll(self) -> None:
        self.monitor.update()
        now = self.now()
        new = self.monitor.progress[self._seen:]
        self._seen += len(new)
        if new:
            with self._lock:
                self.samples.append((now, new[-1].verified))

    def start(self) -> None:
        # What is in the log already arrived at unknown times: skip it.
        self.monitor.update()
        self._seen = len(self.monitor.progress)
        self._thread = threading.Thread(target=self._run, name="bench-guest-sampler",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def wait_past(self, t: float, timeout: float) -> None:
        """Until a sample later than ``t`` arrived (so a window ending at ``t`` is covered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.samples and self.samples[-1][0] > t:
                    return
            time.sleep(self.interval)

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            return [(round(t, 3), v) for t, v in self.samples]


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fabric_in(ops: LabOps, host: str) -> dict[str, int]:
    fab = ops.agent(host).call("agent_stats")["fabric"]
    return {"bytes_in": int(fab["bytes_in"]), "pages_in": int(fab["pages_in"])}


def _op_record(op: dict[str, Any], window: tuple[float, float], layout_before: dict[str, int],
               layout_after: dict[str, int] | None) -> dict[str, Any]:
    pr = op.get("progress", {})
    return {"id": op.get("id"), "state": op.get("state"), "fault": op.get("fault"),
            "strategy": op.get("strategy"), "source": op.get("source"), "dest": op.get("dest"),
            "seconds": pr.get("elapsed_s"), "resent": int(pr.get("resent", 0)),
            "invalidated": int(pr.get("invalidated", 0)),
            "window": [round(window[0], 3), round(window[1], 3)],
            "layout_before": layout_before, "layout_after": layout_after,
            "progress": pr, "parts": op.get("parts", []),
            **({"naive": op["naive"]} if "naive" in op else {})}


def scenario(settings: Settings, lab_dir: Path, lab_prefix: str, limit_bytes: int
             ) -> Callable[[LabContext], dict[str, Any]]:
    """The benchmark's steps, as a ``SplitParams.scenario``; records everything raw
    (what :func:`figures` turns into ratios), also when a step fails."""

    def body(ctx: LabContext) -> dict[str, Any]:
        ops = LabOps(ctx, ProgressPrinter(sys.stderr, interval=2.0), log=_err)
        sampler = GuestSampler(ctx.workdir / "serial.log")
        sampler.start()
        out: dict[str, Any] = {"tcp": {}, "ops": {}, "skipped": [], "error": None,
                               "hosts": {n: a.host for n, a in ctx.agents.items()}}
        try:
            _steps(ctx, ops, Lab(lab_dir, prefix=lab_prefix), sampler, out, settings,
                   limit_bytes)
        except Exception as exc:  # recorded, so the figures measured so far are kept
            LOG.exception("benchmark scenario failed")
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            out["guest_samples"] = sampler.stop()
        return out

    return body


def _steps(ctx: LabContext, ops: LabOps, lab: Lab, sampler: GuestSampler, out: dict[str, Any],
           s: Settings, limit_bytes: int) -> None:
    def may_start(step: str) -> bool:
        if ctx.running():
            _err(f"-- {step}")
            return True
        out["skipped"].append(step)
        return False

    def timed(name: str, start: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        layout = ops.layout()
        t0 = sampler.now()
        op = start()
        t1 = sampler.now()
        rec = _op_record(op, (t0, t1), layout, ops.layout())
        out["ops"][name] = rec
        _err(f"   {name}: {rec['state']} in {rec['seconds']} s, re-sent {rec['resent']}, "
             f"invalidated {rec['invalidated']}")
        return rec

    def not_on_main(layout: dict[str, int]) -> int:
        return sum(n for h, n in layout.items() if h != ctx.main.host) * PAGE

    if not may_start("R: plain TCP h2->h4, h4->h1"):
        return
    out["tcp"]["h2_h4"] = rate_record(tcpbulk.measure(lab, "h2", "h4", s.tcp_seconds,
                                                port=TCP_PORTS[0]))
    out["tcp"]["h4_h1"] = rate_record(tcpbulk.measure(lab, "h4", "h1", s.tcp_seconds,
                                                port=TCP_PORTS[1]))
    _err(f"   R h2->h4 {out['tcp']['h2_h4']['mbit_per_s']} Mbit/s, "
         f"h4->h1 {out['tcp']['h4_h1']['mbit_per_s']} Mbit/s")
    if not may_start(f"B6 before: the guest alone for {s.before_s:g} s"):
        return
    quiet = sampler.now()
    time.sleep(s.before_s)
    out["before_window"] = [round(quiet, 3), round(sampler.now(), 3)]

    if not may_start("B2: partial migration h2 -> h4 (ipmigrate)"):
        return
    in0 = _fabric_in(ops, "h4")
    rec = timed("b2_ipmigrate", lambda: ops.partial("h2", "h4", "ipmigrate"))
    in1 = _fabric_in(ops, "h4")
    rec["part_bytes"] = sum(int(p.get("part_pages", 0)) for p in rec["parts"]) * PAGE
    rec["dest_fabric_bytes_in"] = in1["bytes_in"] - in0["bytes_in"]
    rec["dest_fabric_pages_in"] = in1["pages_in"] - in0["pages_in"]

    if not may_start("B2 naive: h3 -> h2 (gather into h1, split again without h3)"):
        return
    in0 = _fabric_in(ops, "h2")
    rec = timed("b2_naive", lambda: ops.partial("h3", "h2", "naive"))
    in1 = _fabric_in(ops, "h2")
    rec["part_bytes"] = rec["layout_before"].get(ops.name("h3"), 0) * PAGE
    rec["dest_fabric_bytes_in"] = in1["bytes_in"] - in0["bytes_in"]

    if not may_start("B3: reintegration onto h1 (ipmigrate)"):
        return
    in0 = _fabric_in(ops, "h1")
    rec = timed("b3_ipmigrate", lambda: ops.reintegrate("ipmigrate"))
    in1 = _fabric_in(ops, "h1")
    rec["bytes_moved"] = not_on_main(rec["layout_before"])
    rec["dest_fabric_bytes_in"] = in1["bytes_in"] - in0["bytes_in"]

    if not may_start("re-split over h2 and h4"):
        return
    out["resplit"] = _resplit(ctx, ops, sampler, s, limit_bytes)
    if not out["resplit"]["drained"]:
        _err(f"   h1's store did not drain in {s.drain_timeout_s:g} s; going on")

    if not may_start("B3 naive: reintegration by gathering through h1"):
        return
    rec = timed("b3_naive", lambda: ops.reintegrate("naive"))
    rec["bytes_moved"] = not_on_main(rec["layout_before"])
    # a last sample after the end, so the last window is covered
    sampler.wait_past(rec["window"][1] + s.min_window_s / 2, 10.0)


def _resplit(ctx: LabContext, ops: LabOps, sampler: GuestSampler, s: Settings,
             limit_bytes: int) -> dict[str, Any]:
    t0 = sampler.now()
    reply = ctx.main.call("split", path=ctx.path, vm=ctx.vm, resident_limit=limit_bytes,
                          sub_hosts=[ops.agent(h).sub_host_entry() for h in ("h2", "h4")])
    deadline = time.monotonic() + s.drain_timeout_s
    stored = -1
    while True:
        files = ctx.main.stats()["files"]
        stored = int(files[ctx.path]["states"]["stored"])
        if stored <= s.drained_pages or time.monotonic() > deadline or not ctx.running():
            break
        time.sleep(0.2)
    t1 = sampler.now()
    return {"pages_to_move": int(reply.get("pages_to_move", 0)),
            "drained": stored <= s.drained_pages, "stored_left": stored,
            "seconds": round(t1 - t0, 3), "layout_after": ops.layout()}


# -- the run ----------------------------------------------------------------------------


def run(settings: Settings, cache_dir: Path, workdir: Path) -> dict[str, Any]:
    prefix = f"ipmb{os.getpid() % 10000}"
    p = SplitParams(workdir=workdir, cache_dir=cache_dir, ram_mb=settings.ram_mb,
                    oracle_mib=oracle_mib(settings.ram_mb),
                    resident_limit_pct=settings.resident_limit_pct, seconds=settings.seconds,
                    report_s=1, hosts=4, sub_hosts=2, link=settings.link, lab_prefix=prefix,
                    page_store_mb=max(1024, settings.ram_mb + 256),
                    substore_mb=max(1024, settings.ram_mb),
                    scenario_after_s=settings.scenario_after_s)
    p.scenario = scenario(settings, workdir / "lab", prefix, p.limit_bytes)
    problems: list[str] = []
    try:
        r, extra = run_split(p)
    except ScenarioError as exc:
        r, extra = exc.result, exc.extra
        problems.append(f"scenario: {exc.cause!r}")
    oracle = {"verdict": r.verdict, "ok": r.ok, "mismatches": r.mismatches,
              "verified": r.verified, "duration_s": round(r.duration_s, 1)}
    return build_result(settings, extra.get("scenario") or {}, oracle, extra, problems)


def build_result(settings: Settings, raw: dict[str, Any], oracle: dict[str, Any],
                 extra: dict[str, Any], problems: Sequence[str] = ()) -> dict[str, Any]:
    """The benchmark's result (the JSON) from what the scenario recorded, the oracle's
    verdict and the run's per-host figures; ``ok`` only with a passing oracle, no
    mismatch and every operation done."""
    problems = list(problems)
    fig = figures(raw, settings.min_window_s)
    if raw.get("error"):
        problems.append(f"scenario step failed: {raw['error']}")
    problems += [f"not run (the guest had stopped): {step}" for step in raw.get("skipped", [])]
    ops: dict[str, Any] = raw.get("ops", {})
    for name in OPS:
        state, fault = _get(ops.get(name), "state"), _get(ops.get(name), "fault")
        if state != "done":
            problems.append(f"{name} ended {state or 'not run'}{f': {fault}' if fault else ''}")
    if raw.get("resplit") and not raw["resplit"]["drained"]:
        problems.append(f"after the re-split h1's store kept "
                        f"{raw['resplit']['stored_left']} pages")
    ok = bool(oracle["ok"]) and oracle["mismatches"] == 0 and not problems
    return {
        "benchmark": "migration (B2 partial migration, B3 reintegration, B6 guest progress)",
        "settings": asdict(settings),
        "hosts": raw.get("hosts", {}),
        "tcp": raw.get("tcp", {}),
        "operations": ops,
        "resplit": raw.get("resplit"),
        "ratios": fig["ratios"],
        "b6": fig["b6"],
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "verdicts": {k: meets(v, TARGETS[k]) for k, v in fig["ratios"].items()},
        "resent_invalidated": {name: {"resent": _get(ops.get(name), "resent"),
                                      "invalidated": _get(ops.get(name), "invalidated")}
                               for name in OPS},
        "oracle": oracle,
        "pages_by_host": extra.get("pages_by_host"),
        "fabric": extra.get("fabric"),
        "guest_samples": raw.get("guest_samples", []),
        "before_window": raw.get("before_window"),
        "problems": problems,
        "ok": ok,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_lab_arguments(parser, "the CI configuration: 512 MiB guest, 80 s oracle (a few minutes)",
                      "guest RAM in MiB (default 1024; 512 with --quick)")
    parser.add_argument("--seconds", type=int, default=None,
                        help="oracle run time after its fill; must cover every step "
                        "(default 160; 80 with --quick)")


def main(args: argparse.Namespace) -> int:
    prog = "ipmigrate-bench migration"
    overrides = lab_overrides(prog, args)
    if overrides is None:
        return 2
    if args.seconds is not None:
        overrides["seconds"] = args.seconds
    settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    if settings.ram_mb < 256 or settings.seconds < 30:
        print(f"{prog}: --ram-mb must be >= 256 and --seconds >= 30", file=sys.stderr)
        return 2
    return run_and_report(args, "ipm-bench-migration-",
                          lambda cache, workdir: run(settings, cache, workdir), summary)
