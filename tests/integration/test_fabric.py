"""Integration tests of the fabric over loopback TCP: real server, clients, TLS, bench.

No root needed: every socket is on 127.0.0.1. The page service is in memory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_ipmigrate.fabric import auth, wire
from nova_ipmigrate.fabric.client import FabricClient
from nova_ipmigrate.fabric.connection import Connection
from nova_ipmigrate.fabric.errors import FabricAuthError, FabricConnectionError
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.fabric.service import InMemoryPageService
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from tests.integration.conftest import REPO
from tests.unit.fabric.helpers import KEY, OTHER_KEY, make_ca, make_host_cert
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
PAGES = 10_000


def page(vm: uuid.UUID, number: int) -> bytes:
    """Content unique to a VM and page; every 5th page is zero (elided on the wire)."""
    if number % 5 == 0:
        return bytes(PAGE_SIZE)
    return (vm.bytes[:8] + number.to_bytes(8, "little")) * (PAGE_SIZE // 16)



@pytest.fixture
def service() -> InMemoryPageService:
    return InMemoryPageService()


@pytest.fixture
def server(service: InMemoryPageService) -> Iterator[FabricServer]:
    with FabricServer(LOOPBACK, 0, "sub-1", KEY, service) as server:
        yield server


def connect(server: FabricServer, key: auth.SharedKey = KEY, streams: int = 1,
            tls: auth.TlsConfig | None = None, peer: str = "sub-1") -> FabricClient:
    return FabricClient("main", LOOPBACK, server.port, key, peer, tls=tls, streams=streams)


@pytest.mark.parametrize("streams", [1, 4])
def test_round_trips_10k_pages(server: FabricServer, service: InMemoryPageService,
                               streams: int) -> None:
    vm = uuid.uuid4()
    with connect(server, streams=streams) as client:
        # Page-out of a first part, bulk migration of the rest.
        client.put_pages(vm, list(range(100)), [page(vm, p) for p in range(100)])
        assert client.bulk_put(vm, ((p, page(vm, p)) for p in range(100, PAGES))) == \
            PAGES - 100
        assert service.held == PAGES
        # Page-in: one page at a time, and in big batches.
        for number in (0, 1, 4999, PAGES - 1):
            assert bytes(client.get_pages(vm, [number])[0]) == page(vm, number)
        got = client.get_pages(vm, list(range(PAGES)))
        assert all(bytes(got[p]) == page(vm, p) for p in range(PAGES))
        client.drop_pages(vm, list(range(0, PAGES, 2)))
        assert set(service.pages_of(vm)) == set(range(1, PAGES, 2))
    assert wait_for(lambda: server.stats().pages_out == PAGES + 4)
    stats = server.stats()
    assert stats.pages_in == PAGES
    assert stats.errors == stats.protocol_errors == stats.auth_failures == 0


def test_concurrent_bulk_and_page_ins(server: FabricServer) -> None:
    # A page-in is never stuck behind a bulk transfer: they use other connections.
    vm = uuid.uuid4()
    with connect(server, streams=4) as client:
        client.put_pages(vm, [0, 1], [page(vm, 0), page(vm, 1)])
        errors: list[BaseException] = []

        def page_ins() -> None:
            try:
                for _ in range(200):
                    assert bytes(client.get_pages(vm, [1])[0]) == page(vm, 1)
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        reader = threading.Thread(target=page_ins)
        reader.start()
        client.bulk_put(vm, ((p, page(vm, p)) for p in range(2, PAGES)))
        reader.join(60)
        assert not errors


def test_wrong_key_rejected_good_clients_still_served(server: FabricServer) -> None:
    vm = uuid.uuid4()
    with connect(server) as good:
        good.put_pages(vm, [1], [page(vm, 1)])
        for _ in range(3):
            with pytest.raises(FabricAuthError):
                connect(server, key=OTHER_KEY)
        assert bytes(good.get_pages(vm, [1])[0]) == page(vm, 1)
    with connect(server) as late:
        assert bytes(late.get_pages(vm, [1])[0]) == page(vm, 1)
    assert wait_for(lambda: server.stats().auth_failures >= 3)


def test_malformed_frame_closes_only_that_connection(server: FabricServer,
                                                     service: InMemoryPageService) -> None:
    vm = uuid.uuid4()
    with connect(server) as client:
        client.put_pages(vm, [1, 2], [page(vm, 1), page(vm, 2)])
        before = service.pages_of(vm)
        # An authenticated raw connection sends a PUT_PAGES whose bitmap and data disagree.
        raw = Connection(socket.create_connection((LOOPBACK, server.port)), "sub-1")
        auth.client_handshake(raw, "rogue", "sub-1", KEY)
        frame = b"".join(bytes(part) for part in wire.encode_pages(
            wire.MessageType.PUT_PAGES, 1, vm, [1, 2], [os.urandom(PAGE_SIZE)] * 2))
        bitmap_at = wire.HEADER_SIZE + 16
        corrupt = frame[:bitmap_at] + b"\x01" + frame[bitmap_at + 1:]
        raw.sock.sendall(corrupt)
        with pytest.raises(FabricConnectionError):
            while True:  # an ERROR notice may come first, then the close
                notice = raw.receive()
                assert notice.header.type is wire.MessageType.ERROR
        assert service.pages_of(vm) == before
        # An unauthenticated peer sending garbage is dropped too.
        with socket.create_connection((LOOPBACK, server.port)) as garbage:
            garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(64))
            garbage.settimeout(5)
            while garbage.recv(4096):
                pass
        assert wait_for(lambda: server.stats().protocol_errors == 2)
        assert bytes(client.get_pages(vm, [2])[0]) == page(vm, 2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fabric-pki")
    ca = make_ca(directory)
    for host in ("main", "sub-1"):
        make_host_cert(directory, host, ca)
    make_host_cert(directory, "main-impostor", ca, san="other-host")
    make_host_cert(directory, "sub-1-impostor", ca, san="other-host")
    return directory


def tls_of(pki: Path, name: str) -> auth.TlsConfig:
    return auth.TlsConfig(str(pki / f"{name}.pem"), str(pki / f"{name}.key"),
                          str(pki / "ca.pem"))


def test_tls_round_trips(pki: Path) -> None:
    service = InMemoryPageService()
    vm = uuid.uuid4()
    with FabricServer(LOOPBACK, 0, "sub-1", KEY, service, tls=tls_of(pki, "sub-1")) as server, \
            connect(server, streams=2, tls=tls_of(pki, "main")) as client:
        client.bulk_put(vm, ((p, page(vm, p)) for p in range(2000)))
        got = client.get_pages(vm, list(range(2000)))
        assert all(bytes(got[p]) == page(vm, p) for p in range(2000))


def test_tls_server_certificate_for_another_host_rejected(pki: Path) -> None:
    with FabricServer(LOOPBACK, 0, "sub-1", KEY, InMemoryPageService(),
                      tls=tls_of(pki, "sub-1-impostor")) as server:
        with pytest.raises(FabricAuthError, match="certificate|hostname"):
            connect(server, tls=tls_of(pki, "main"))


def test_tls_client_certificate_for_another_host_rejected(pki: Path) -> None:
    with FabricServer(LOOPBACK, 0, "sub-1", KEY, InMemoryPageService(),
                      tls=tls_of(pki, "sub-1")) as server:
        with pytest.raises(FabricAuthError):
            connect(server, tls=tls_of(pki, "main-impostor"))
        with connect(server, tls=tls_of(pki, "main")) as client:
            client.ping()
        assert wait_for(lambda: server.stats().auth_failures == 1)


def test_tls_client_without_tls_rejected(pki: Path) -> None:
    with FabricServer(LOOPBACK, 0, "sub-1", KEY, InMemoryPageService(),
                      tls=tls_of(pki, "sub-1")) as server:
        with pytest.raises((FabricAuthError, FabricConnectionError)):
            connect(server)


def test_bench_fabric_quick() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nova_ipmigrate.cmd.bench", "fabric", "--quick",
         "--bulk-mib", "16", "--latency-samples", "500"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout)
    assert set(report["ratios"]) == {"fabric_1_vs_plain_tcp_1", "fabric_4_vs_plain_tcp_4",
                                     "fabric_4_vs_plain_tcp_1"}
    assert all(ratio > 0 for ratio in report["ratios"].values())
    assert report["page_in"]["p50_us"] > 0 and report["page_in"]["per_s"] > 0
    assert report["plain_tcp_round_trip"]["p50_us"] > 0
    assert "page-in of 1 page" in result.stderr
