"""B5 (fabric bulk throughput against plain TCP) and a B1-like remote page-in latency.

In one run, against a peer in another process (another host's agent would be
another process too, so the GIL is not shared):

* plain TCP bulk throughput, 1 and N connections: a minimal sender and a
  receiver that reads into one big buffer; this is the limit ``R``;
* fabric ``bulk_put`` throughput, 1 and N streams, of random pages (so zero
  elision cannot flatter it), and separately a zero-page-heavy transfer;
* page-in latency: GET_PAGES of one random page from one client thread,
  p50/p99 and page-ins per second.

The peer's page service discards bulk pages by default (``--store copy``
copies them into a slab like a real store), so the figures are the
transport's. Only ratios measured in the same run mean anything on a shared
machine.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import itertools
import json
import multiprocessing
import os
import random
import secrets
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

from nova_ipmigrate.fabric.auth import SharedKey
from nova_ipmigrate.fabric.client import ROUTE_RUN_PAGES, FabricClient
from nova_ipmigrate.fabric.connection import tune_socket
from nova_ipmigrate.fabric.errors import RemoteBadRequestError
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.fabric.wire import HEADER_SIZE, Buffer, CopyRequest
from nova_ipmigrate.memfs.protocol import PAGE_SIZE

HOST = "bench-main"
PEER = "bench-peer"
BULK_VM = uuid.UUID("00000000-0000-4000-8000-00000000b005")
LATENCY_VM = uuid.UUID("00000000-0000-4000-8000-00000000b001")
#: Distinct random pages cycled through as the source of a transfer (16 MiB).
SOURCE_PAGES = 4096
#: Pages held by the peer for the page-in test.
LATENCY_PAGES = 4096
#: One page in this many is non-zero in the zero-heavy transfer.
ZERO_HEAVY_EVERY = 10
_CHUNK = 4 * 2**20
_SEND_SIZE = 2**20
#: Sizes of a one-page GET_PAGES and of its PAGES reply, for the plain TCP round trip.
_PAGE_IN_REQUEST = HEADER_SIZE + 8
_PAGE_IN_REPLY = HEADER_SIZE + 8 + 1 + PAGE_SIZE

CLONE_NEWNET = 0x40000000
TARGETS = {"fabric_vs_plain_tcp": 0.8, "page_in_p50_us": 100, "page_in_p99_us": 1000}


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1"
    streams: int = 4
    batch_pages: int = 256
    bulk_mib: int = 1024
    repeats: int = 3
    latency_samples: int = 20_000
    buffer_bytes: int = 0
    store: str = "discard"
    #: network namespaces of the measuring side and of the peer (lab hosts), so
    #: both transports cross the same link; None: this process's namespace
    netns: str | None = None
    peer_netns: str | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        return cls(**{"bulk_mib": 64, "repeats": 3, "latency_samples": 3000, **overrides})


@dataclass(frozen=True)
class Transfer:
    bytes: int  # of page content (what the caller moved)
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / 2**20 / self.seconds

    def report(self) -> dict[str, float]:
        return {"bytes": self.bytes, "seconds": round(self.seconds, 6),
                "MiB_per_s": round(self.mib_per_s, 1)}


def _median(runs: Sequence[Transfer]) -> Transfer:
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


# -- the peer process ---------------------------------------------------------------------


class _PeerService:
    """The peer's page service: keeps the page-in test's pages, discards or copies the rest."""

    def __init__(self, copy: bool) -> None:
        self._held: dict[int, bytes] = {}
        self._slab = bytearray(SOURCE_PAGES * PAGE_SIZE) if copy else None
        self._lock = threading.Lock()

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[Buffer | None]:
        return [self._held.get(page) for page in pages]

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[Buffer]) -> None:
        if vm == LATENCY_VM:
            with self._lock:
                self._held.update(zip(pages, map(bytes, data), strict=True))
        elif self._slab is not None:
            slab = memoryview(self._slab)
            for page, content in zip(pages, data, strict=True):
                slot = page % SOURCE_PAGES * PAGE_SIZE
                slab[slot:slot + PAGE_SIZE] = content

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        with self._lock:
            for page in pages:
                self._held.pop(page, None)

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        raise RemoteBadRequestError("the benchmark peer does not stage pages")

    def drop_vm(self, vm: uuid.UUID) -> int:
        with self._lock:
            n = len(self._held)
            self._held.clear()
        return n

    def directory(self, vm: uuid.UUID) -> tuple[bytes, bytes]:
        raise RemoteBadRequestError("no main-host moves in a benchmark")

    def copy_pages(self, vm: uuid.UUID, request: CopyRequest) -> tuple[int, list[int]]:
        raise RemoteBadRequestError("the benchmark peer does not copy pages")


def enter_netns(name: str) -> None:
    """Move the calling thread (and the threads it starts later) into netns ``name``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _fabric_peer(pipe: Pipe, settings: Settings, key: bytes) -> None:
    if settings.peer_netns:
        enter_netns(settings.peer_netns)
    server = FabricServer(settings.address, 0, PEER, SharedKey(key),
                          _PeerService(copy=settings.store == "copy"),
                          buffer_bytes=settings.buffer_bytes)
    server.start()
    pipe.send(server.port)
    pipe.recv()
    server.stop()


def _plain_peer(pipe: Pipe, settings: Settings) -> None:
    """Plain TCP: a bulk sink (reads each connection to its end into one buffer, then
    answers one byte) and an echo answering each page-in-sized request with a page."""
    if settings.peer_netns:
        enter_netns(settings.peer_netns)
    sink = socket.create_server((settings.address, 0), backlog=64)
    echo = socket.create_server((settings.address, 0), backlog=64)
    pipe.send((sink.getsockname()[1], echo.getsockname()[1]))

    def drain(sock: socket.socket) -> None:
        with sock:
            tune_socket(sock, settings.buffer_bytes)
            buffer = memoryview(bytearray(_CHUNK))
            while sock.recv_into(buffer):
                pass
            sock.sendall(b"k")

    def answer(sock: socket.socket) -> None:
        with sock:
            tune_socket(sock)
            request = bytearray(_PAGE_IN_REQUEST)
            reply = os.urandom(_PAGE_IN_REPLY)
            while _recv_exact(sock, request):
                sock.sendall(reply)

    def serve(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=handle, args=(sock,), daemon=True).start()

    threading.Thread(target=serve, args=(echo, answer), daemon=True).start()
    serve(sink, drain)


def _recv_exact(sock: socket.socket, buffer: bytearray) -> bool:
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = sock.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


class _Peer:
    """A child process serving as the remote host."""

    def __init__(self, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=target, args=(child, *args), daemon=True)
        self._process.start()
        if not self._pipe.poll(60):
            self._process.kill()
            raise RuntimeError("benchmark peer process did not start")
        self.address: Any = self._pipe.recv()  # what the peer tells: its port(s)

    def close(self) -> None:
        try:
            self._pipe.send("stop")
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# -- measurements -------------------------------------------------------------------------


def plain_tcp(settings: Settings, port: int, streams: int, source: memoryview) -> Transfer:
    """Send ``bulk_mib`` over ``streams`` connections from ``source`` (the fabric runs'
    pages, so both read the same memory), 1 MiB per send like a bulk batch."""
    total = settings.bulk_mib * 2**20
    socks = []
    for _ in range(streams):
        sock = socket.create_connection((settings.address, port))
        tune_socket(sock, settings.buffer_bytes)
        socks.append(sock)

    def send(sock: socket.socket, size: int) -> None:
        offset = 0
        while size > 0:
            chunk = source[offset:offset + min(size, _SEND_SIZE)]
            sock.sendall(chunk)
            size -= len(chunk)
            offset = (offset + len(chunk)) % len(source)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the receiver has read everything
        sock.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=send, args=(sock, total // streams)) for sock in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Transfer(total // streams * streams, time.perf_counter() - start)


def _source() -> memoryview:
    return memoryview(os.urandom(SOURCE_PAGES * PAGE_SIZE))


def _pages_of(source: memoryview) -> list[memoryview]:
    return [source[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i in range(SOURCE_PAGES)]


def _items(count: int, pages: list[memoryview],
           zero_every: int = 0) -> Iterator[tuple[int, Buffer]]:
    """``count`` numbered pages cycling through ``pages`` (every ``zero_every``-th of them
    only, zeros in between); built in C so the source costs the sender little."""
    if not zero_every:
        return zip(range(count), itertools.cycle(pages))
    zero = memoryview(bytes(PAGE_SIZE))
    pattern = itertools.cycle([pages[0], *[zero] * (zero_every - 1)])
    return zip(range(count), pattern, strict=False)


def fabric_bulk(client: FabricClient, settings: Settings, pages: list[memoryview],
                zero_every: int = 0) -> Transfer:
    count = settings.bulk_mib * 2**20 // PAGE_SIZE
    start = time.perf_counter()
    client.bulk_put(BULK_VM, _items(count, pages, zero_every), settings.batch_pages)
    return Transfer(count * PAGE_SIZE, time.perf_counter() - start)


def _latencies(one: Callable[[int], object], samples: int) -> dict[str, float]:
    """p50/p99 (us) and rate of ``one(page)`` for random pages, after a warm-up."""
    choice = random.Random(5).randrange
    for _ in range(min(500, samples)):
        one(choice(LATENCY_PAGES))
    times = []
    began = time.perf_counter()
    for _ in range(samples):
        page = choice(LATENCY_PAGES)
        start = time.perf_counter()
        one(page)
        times.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    quantiles = statistics.quantiles(times, n=100)
    return {"samples": samples, "p50_us": round(quantiles[49] * 1e6, 1),
            "p99_us": round(quantiles[98] * 1e6, 1), "per_s": round(samples / elapsed)}


def page_in_latency(client: FabricClient, settings: Settings,
                    pages: list[memoryview]) -> dict[str, float]:
    for first in range(0, LATENCY_PAGES, 1024):
        client.put_pages(LATENCY_VM, list(range(first, first + 1024)),
                         pages[first:first + 1024])
    return _latencies(lambda page: client.get_pages(LATENCY_VM, [page]),
                      settings.latency_samples)


def plain_round_trip(settings: Settings, port: int) -> dict[str, float]:
    """The same exchange in plain TCP: a page-in-sized request, a page-sized answer."""
    with socket.create_connection((settings.address, port)) as sock:
        tune_socket(sock)
        request = bytes(_PAGE_IN_REQUEST)
        reply = bytearray(_PAGE_IN_REPLY)

        def one(_page: int) -> None:
            sock.sendall(request)
            _recv_exact(sock, reply)

        return _latencies(one, settings.latency_samples)


def run(settings: Settings) -> dict[str, Any]:
    if settings.netns:
        enter_netns(settings.netns)
    key = secrets.token_bytes(32)
    streams = settings.streams
    source = _source()
    pages = _pages_of(source)
    plain_peer = _Peer(_plain_peer, settings)
    sink_port, echo_port = plain_peer.address
    try:
        plain = {n: _median([plain_tcp(settings, sink_port, n, source)
                             for _ in range(settings.repeats)])
                 for n in sorted({1, streams})}
        plain_latency = plain_round_trip(settings, echo_port)
    finally:
        plain_peer.close()
    fabric_peer = _Peer(_fabric_peer, settings, key)

    def connect(n: int) -> FabricClient:
        return FabricClient(HOST, settings.address, fabric_peer.address, SharedKey(key), PEER,
                            streams=n, batch_pages=settings.batch_pages,
                            buffer_bytes=settings.buffer_bytes)

    def measure(client: FabricClient, zero_every: int = 0) -> Transfer:
        return _median([fabric_bulk(client, settings, pages, zero_every)
                        for _ in range(settings.repeats)])

    try:
        fabric: dict[int, Transfer] = {}
        for n in sorted({1, streams}):
            with connect(n) as client:
                # Warm up: open and authenticate every stream outside the timing.
                client.bulk_put(BULK_VM, _items(n * ROUTE_RUN_PAGES, pages))
                fabric[n] = measure(client)
                if n == streams:
                    zero_heavy = measure(client, ZERO_HEAVY_EVERY)
        with connect(1) as client:
            latency = page_in_latency(client, settings, pages)
    finally:
        fabric_peer.close()
    return {
        "benchmark": "fabric (B5 throughput, B1-like page-in)",
        "settings": asdict(settings),
        "plain_tcp": {str(n): transfer.report() for n, transfer in plain.items()},
        "fabric": {str(n): transfer.report() for n, transfer in fabric.items()},
        "fabric_zero_heavy": {**zero_heavy.report(), "streams": streams,
                              "non_zero_fraction": 1 / ZERO_HEAVY_EVERY},
        "ratios": {
            "fabric_1_vs_plain_tcp_1": round(fabric[1].mib_per_s / plain[1].mib_per_s, 3),
            f"fabric_{streams}_vs_plain_tcp_{streams}":
                round(fabric[streams].mib_per_s / plain[streams].mib_per_s, 3),
            f"fabric_{streams}_vs_plain_tcp_1":
                round(fabric[streams].mib_per_s / plain[1].mib_per_s, 3),
        },
        "page_in": latency,
        "plain_tcp_round_trip": plain_latency,
        "page_in_p50_vs_plain_tcp_round_trip":
            round(latency["p50_us"] / plain_latency["p50_us"], 2),
        "targets": TARGETS,
    }


def summary(result: dict[str, Any]) -> str:
    settings = result["settings"]
    streams = settings["streams"]
    plain, fabric = result["plain_tcp"], result["fabric"]
    latency = result["page_in"]
    lines = [
        f"fabric benchmark, {settings['bulk_mib']} MiB per transfer, median of "
        f"{settings['repeats']}, peer at {settings['address']}",
        f"  plain TCP   1 stream: {plain['1']['MiB_per_s']:8.1f} MiB/s   {streams} streams: "
        f"{plain[str(streams)]['MiB_per_s']:8.1f} MiB/s",
        f"  fabric      1 stream: {fabric['1']['MiB_per_s']:8.1f} MiB/s   {streams} streams: "
        f"{fabric[str(streams)]['MiB_per_s']:8.1f} MiB/s",
        f"  fabric, 90% zero pages, {streams} streams: "
        f"{result['fabric_zero_heavy']['MiB_per_s']:.1f} MiB/s of guest memory",
    ]
    lines += [f"  ratio {name}: {value:.2f} (target >= {TARGETS['fabric_vs_plain_tcp']})"
              for name, value in result["ratios"].items()]
    plain_rtt = result["plain_tcp_round_trip"]
    lines.append(
        f"  page-in of 1 page: p50 {latency['p50_us']:.0f} us (target <= "
        f"{TARGETS['page_in_p50_us']}), p99 {latency['p99_us']:.0f} us (target <= "
        f"{TARGETS['page_in_p99_us']}), {latency['per_s']} page-ins/s, 1 thread")
    lines.append(
        f"  plain TCP round trip of the same sizes: p50 {plain_rtt['p50_us']:.0f} us, "
        f"p99 {plain_rtt['p99_us']:.0f} us (page-in p50 = "
        f"{result['page_in_p50_vs_plain_tcp_round_trip']:.1f}x)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for CI (well under 20 s)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address the peer listens on and is reached at")
    parser.add_argument("--streams", type=int, default=4,
                        help="parallel streams of the N-stream runs ([fabric] streams)")
    parser.add_argument("--batch-pages", type=int, default=256,
                        help="pages per bulk message ([fabric] batch_pages)")
    parser.add_argument("--bulk-mib", type=int, help="MiB per transfer")
    parser.add_argument("--repeats", type=int, help="runs of each transfer (median reported)")
    parser.add_argument("--latency-samples", type=int, help="page-ins timed")
    parser.add_argument("--buffer-bytes", type=int, default=0,
                        help="SO_SNDBUF/SO_RCVBUF of bulk connections, plain and fabric "
                        "(0: kernel autotuning)")
    parser.add_argument("--store", choices=("discard", "copy"), default="discard",
                        help="what the peer does with bulk pages")
    parser.add_argument("--lab", action="store_true",
                        help="measure across a link of the namespace lab: a 2-host lab is "
                        "created (and removed), this side runs in h1, the peer in h2 (root)")
    parser.add_argument("--link", default=None,
                        help="with --lab: tc rate of the hosts' links (default unshaped)")


def _run_child(pipe: Pipe, settings: Settings) -> None:
    pipe.send(run(settings))


def _run_in_lab(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    import tempfile

    from nova_ipmigrate.lab.hosts import Lab
    with tempfile.TemporaryDirectory(prefix="ipm-bench-") as tmp:
        lab = Lab(tmp, prefix=f"ipb{os.getpid() % 10000}")
        try:
            h1, h2 = lab.up(2, args.link)
            overrides.update(address=h2.address, netns=h1.netns, peer_netns=h2.netns)
            settings = (Settings.quick(**overrides) if args.quick
                        else Settings(**overrides))
            # in a child: setns would move this process out of the root namespace
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_run_child, args=(child, settings))
            proc.start()
            result = parent.recv()
            proc.join()
            result["link"] = args.link or "unshaped (veth through the lab switch)"
        finally:
            lab.down()
    print(json.dumps(result, indent=2))
    print(summary(result), file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    overrides = {name: value for name, value in (
        ("address", args.address), ("streams", args.streams),
        ("batch_pages", args.batch_pages), ("bulk_mib", args.bulk_mib),
        ("repeats", args.repeats), ("latency_samples", args.latency_samples),
        ("buffer_bytes", args.buffer_bytes), ("store", args.store)) if value is not None}
    if args.streams < 2:
        print("ipmigrate-bench fabric: --streams must be at least 2", file=sys.stderr)
        return 2
    if args.lab:
        return _run_in_lab(args, overrides)
    settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    result = run(settings)
    print(json.dumps(result, indent=2))
    print(summary(result), file=sys.stderr)
    return 0
