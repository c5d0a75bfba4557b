"""Tests of nova_ipmigrate.fabric.client against a FabricServer on 127.0.0.1.

Loopback only; no root. The server is real, the page service in memory.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from nova_ipmigrate.agent.pageservice import AgentPageService
from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric import wire
from nova_ipmigrate.fabric.client import FabricClient
from nova_ipmigrate.fabric.errors import (
    FabricAuthError,
    FabricConnectionError,
    FabricProtocolError,
    FabricTimeoutError,
    PagesNotHeldError,
    RemoteBadRequestError,
    RemoteInternalError,
    StoreFullError,
)
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.fabric.service import InMemoryPageService
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from tests.unit.fabric.helpers import KEY, OTHER_KEY, VM, RecordingService
from tests.waiting import wait_for


def page(seed: int) -> bytes:
    """A recognisable non-zero page."""
    return seed.to_bytes(8, "little") * (PAGE_SIZE // 8)


@pytest.fixture
def service() -> RecordingService:
    return RecordingService()


@pytest.fixture
def server(service: RecordingService) -> Iterator[FabricServer]:
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server:
        yield server


def client_for(server: FabricServer, key: object = KEY, **kwargs: object) -> FabricClient:
    return FabricClient("host-a", "127.0.0.1", server.port, key, "host-b",  # type: ignore[arg-type]
                        **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def client(server: FabricServer) -> Iterator[FabricClient]:
    with client_for(server, streams=4, request_timeout=5.0) as client:
        yield client


def test_put_get_drop(client: FabricClient, service: RecordingService) -> None:
    pages = list(range(0, 300, 3))
    data = [bytes(PAGE_SIZE) if p % 2 else page(p) for p in pages]
    client.put_pages(VM, pages, data)
    got = client.get_pages(VM, pages)
    assert [bytes(view) for view in got] == data
    assert all(view.readonly and len(view) == PAGE_SIZE for view in got)
    client.drop_pages(VM, pages[:10])
    assert service.held == len(pages) - 10
    assert client.ping() > 0


def test_results_outlive_later_requests(client: FabricClient) -> None:
    client.put_pages(VM, [1, 2], [page(1), page(2)])
    first = client.get_pages(VM, [1])
    client.get_pages(VM, [2])
    assert bytes(first[0]) == page(1)


def test_get_more_than_one_message(client: FabricClient, service: RecordingService) -> None:
    count = wire.MAX_PAGES + 100
    client.bulk_put(VM, ((p, page(p)) for p in range(count)))
    service.calls.clear()
    got = client.get_pages(VM, list(range(count)))
    assert len(got) == count and bytes(got[-1]) == page(count - 1)
    assert [len(call[2]) for call in service.calls] == [wire.MAX_PAGES, 100]


def test_put_is_one_request(client: FabricClient) -> None:
    with pytest.raises(ValueError, match="use bulk_put"):
        client.put_pages(VM, list(range(wire.MAX_PAGES + 1)),
                         [bytes(PAGE_SIZE)] * (wire.MAX_PAGES + 1))


def test_not_held(client: FabricClient) -> None:
    client.put_pages(VM, [1], [page(1)])
    with pytest.raises(PagesNotHeldError) as info:
        client.get_pages(VM, [1, 2])
    assert info.value.pages == [2]
    assert bytes(client.get_pages(VM, [1])[0]) == page(1)  # still usable


def test_store_full_is_all_or_nothing() -> None:
    service = InMemoryPageService(capacity_pages=3)
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server) as client:
        client.put_pages(VM, [1, 2], [page(1), page(2)])
        with pytest.raises(StoreFullError):
            client.put_pages(VM, [3, 4], [page(3), page(4)])
        assert set(service.pages_of(VM)) == {1, 2}


def test_wrong_key_is_refused_at_connect(server: FabricServer) -> None:
    with pytest.raises(FabricAuthError):
        client_for(server, key=OTHER_KEY)
    assert wait_for(lambda: server.stats().auth_failures == 1)


def test_wrong_peer_name_is_refused(server: FabricServer) -> None:
    with pytest.raises(FabricAuthError, match="expected 'host-c'"):
        FabricClient("host-a", "127.0.0.1", server.port, KEY, "host-c")


def test_unreachable_peer() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(FabricConnectionError, match="cannot connect"):
        FabricClient("host-a", "127.0.0.1", port, KEY, "host-b", connect_timeout=1)


@pytest.mark.parametrize("kwargs", [{"streams": 0}, {"batch_pages": 0},
                                    {"batch_pages": wire.MAX_PAGES + 1}, {"window": 0}])
def test_bad_arguments(server: FabricServer, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        client_for(server, **kwargs)


def test_no_talking_to_itself() -> None:
    with pytest.raises(ValueError, match="itself"):
        FabricClient("host-b", "127.0.0.1", 1, KEY, "host-b")


def test_reconnects_after_peer_restart(service: RecordingService) -> None:
    first = FabricServer("127.0.0.1", 0, "host-b", KEY, service)
    first.start()
    client = client_for(first)
    try:
        client.put_pages(VM, [1], [page(1)])
        first.stop()
        with FabricServer("127.0.0.1", first.port, "host-b", KEY, service):
            # The pooled connection is dead; the request goes again on a new one.
            assert bytes(client.get_pages(VM, [1])[0]) == page(1)
    finally:
        client.close()


def test_gives_up_when_peer_stays_down(service: RecordingService) -> None:
    server = FabricServer("127.0.0.1", 0, "host-b", KEY, service)
    server.start()
    client = client_for(server, retries=2, connect_timeout=1)
    server.stop()
    start = time.monotonic()
    with pytest.raises(FabricConnectionError):
        client.get_pages(VM, [1])
    assert time.monotonic() - start < 5
    client.close()


class SlowService(RecordingService):
    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[wire.Buffer | None]:
        result = super().get_pages(vm, pages)
        time.sleep(1.0)
        return result


def test_timeout_is_not_retried() -> None:
    service = SlowService()
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server, request_timeout=0.2) as client:
        with pytest.raises(FabricTimeoutError):
            client.get_pages(VM, [1])
        assert [call[0] for call in service.calls] == ["get"]


def test_concurrent_callers(server: FabricServer, service: RecordingService) -> None:
    client = client_for(server, request_connections=3)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(30):
                number = index * 1000 + round_
                client.put_pages(VM, [number], [page(number)])
                assert bytes(client.get_pages(VM, [number])[0]) == page(number)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    client.close()
    assert not errors
    assert service.held == 8 * 30
    assert server.stats().connections <= 3  # the pool bound holds


def test_closed_client_refuses(server: FabricServer) -> None:
    client = client_for(server)
    client.close()
    with pytest.raises(FabricConnectionError, match="closed"):
        client.get_pages(VM, [1])


# -- bulk_put -----------------------------------------------------------------------------


@pytest.mark.parametrize("streams", [1, 4])
def test_bulk_put(server: FabricServer, service: RecordingService, streams: int) -> None:
    with client_for(server, streams=streams, batch_pages=64) as client:
        pages = list(range(5000))
        sent = client.bulk_put(VM, ((p, bytes(PAGE_SIZE) if p % 7 == 0 else page(p))
                                    for p in pages))
        assert sent == len(pages)
    held = service.pages_of(VM)
    assert set(held) == set(pages)
    assert all(held[p] == (bytes(PAGE_SIZE) if p % 7 == 0 else page(p)) for p in pages)
    assert server.stats().connections <= streams + 1


def test_bulk_put_keeps_order_of_a_page_sent_twice(client: FabricClient,
                                                   service: RecordingService) -> None:
    # Page 5 goes early with old content and again at the end: the later copy wins
    # even though batches run over 4 streams in parallel.
    def items() -> Iterator[tuple[int, bytes]]:
        yield 5, page(1)
        for p in range(10_000, 14_000):
            yield p, page(p)
        yield 5, page(2)

    client.bulk_put(VM, items(), batch_pages=16)
    assert service.pages_of(VM)[5] == page(2)


def test_bulk_put_store_full() -> None:
    service = InMemoryPageService(capacity_pages=1000)
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server, streams=3) as client:
        with pytest.raises(StoreFullError):
            client.bulk_put(VM, ((p, page(p)) for p in range(5000)), batch_pages=100)
        assert service.held <= 1000
        # The client still works afterwards.
        client.drop_pages(VM, list(range(5000)))
        client.put_pages(VM, [1], [page(1)])


def test_bulk_put_source_failure(client: FabricClient) -> None:
    def items() -> Iterator[tuple[int, bytes]]:
        yield from ((p, page(p)) for p in range(1000))
        raise OSError("source disk failed")

    with pytest.raises(OSError, match="source disk failed"):
        client.bulk_put(VM, items())
    client.put_pages(VM, [1], [page(1)])


def test_bulk_put_bad_page(client: FabricClient) -> None:
    with pytest.raises(ValueError, match="bytes, not 4096"):
        client.bulk_put(VM, [(1, b"short")])


class Saboteur(InMemoryPageService):
    """Cuts every server connection while serving the ``when``-th put."""

    def __init__(self, when: int) -> None:
        super().__init__()
        self.server: FabricServer | None = None
        self.puts = 0
        self.when = when

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[wire.Buffer]) -> None:
        super().put_pages(vm, pages, data)
        self.puts += 1
        if self.puts == self.when:
            assert self.server is not None
            for sock in list(self.server._connections):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("streams", [1, 3])
def test_bulk_put_resends_over_a_new_connection(streams: int) -> None:
    service = Saboteur(when=5)
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server:
        service.server = server
        with client_for(server, streams=streams) as client:
            items = [(p, page(p)) for p in range(3000)]
            assert client.bulk_put(VM, items, batch_pages=50) == 3000
    held = service.pages_of(VM)
    assert len(held) == 3000 and all(held[p] == page(p) for p in range(3000))


def test_bulk_put_data_kept_by_caller(client: FabricClient, service: RecordingService) -> None:
    buffer = bytearray(os.urandom(PAGE_SIZE * 100))
    view = memoryview(buffer)
    client.bulk_put(VM, ((p, view[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]) for p in range(100)))
    held = service.pages_of(VM)
    assert b"".join(held[p] for p in range(100)) == bytes(buffer)


def test_bulk_put_error_after_the_last_batch_was_sent() -> None:
    # Every batch is out before the first refusal comes back: the stream fails while
    # collecting acknowledgements, after the producer has finished.
    service = InMemoryPageService(capacity_pages=10)
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server, streams=1, window=4) as client:
        with pytest.raises(StoreFullError):
            client.bulk_put(VM, ((p, page(p)) for p in range(30)), batch_pages=10)
        assert service.held == 10


# -- partial migration: copy_pages, commit_pages, drop_vm ----------------------------------

STAGING = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


class CallsService(RecordingService):
    """Also records commits, VM drops and copies (copies go through ``copier``)."""

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        self.calls.append(("commit", vm, list(pages)))
        return super().commit_pages(vm, key, pages)

    def drop_vm(self, vm: uuid.UUID) -> int:
        self.calls.append(("drop_vm", vm, []))
        return super().drop_vm(vm)

    def copy_pages(self, vm: uuid.UUID, request: wire.CopyRequest) -> tuple[int, list[int]]:
        self.calls.append(("copy", vm, list(request.pages)))
        return super().copy_pages(vm, request)


def test_commit_and_drop_vm() -> None:
    service = CallsService()
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server) as client:
        count = wire.MAX_PAGES + 10
        client.bulk_put(STAGING, ((p, page(p)) for p in range(count)))
        client.put_pages(VM, [0, count], [page(100), page(101)])
        service.calls.clear()
        assert client.commit_pages(VM, STAGING, list(range(count))) == count
        # One request per MAX_PAGES.
        assert [len(call[2]) for call in service.calls] == [wire.MAX_PAGES, 10]
        held = service.pages_of(VM)
        assert len(held) == count + 1 and held[0] == page(0) and held[count] == page(101)
        assert service.pages_of(STAGING) == {}
        assert client.drop_vm(VM) == count + 1
        assert client.drop_vm(VM) == 0 and client.drop_vm(STAGING) == 0
        assert service.held == 0
        assert client.commit_pages(VM, STAGING, []) == 0


def test_commit_is_all_or_nothing(client: FabricClient, service: RecordingService) -> None:
    client.put_pages(STAGING, [1, 2], [page(1), page(2)])
    with pytest.raises(PagesNotHeldError) as info:
        client.commit_pages(VM, STAGING, [1, 3, 2, 4])
    assert info.value.pages == [3, 4]
    assert service.pages_of(VM) == {} and set(service.pages_of(STAGING)) == {1, 2}
    assert client.commit_pages(VM, STAGING, [2, 1]) == 2  # the client is still usable


def test_copy_needs_a_service_that_copies(client: FabricClient) -> None:
    with pytest.raises(RemoteBadRequestError, match="not supported"):
        client.copy_pages(VM, STAGING, "host-d", "127.0.0.1", 1, [1])


def test_copy_is_chunked_and_summed() -> None:
    sent: list[int] = []

    def copier(request: wire.CopyRequest, items: list[tuple[int, bytes]]) -> int:
        sent.extend(page for page, _ in items)
        return len(items)

    service = CallsService()
    service.copier = copier
    count = wire.MAX_PAGES + 50
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server) as client:
        client.bulk_put(VM, ((p, page(p)) for p in range(0, count, 2)))
        service.calls.clear()
        copied, missing = client.copy_pages(VM, STAGING, "host-d", "127.0.0.1", 1,
                                            list(range(count)))
    assert copied == len(sent) == (count + 1) // 2
    assert missing == list(range(1, count, 2))
    assert [len(call[2]) for call in service.calls] == [wire.MAX_PAGES, 50]


class SlowCopies(CallsService):
    def copy_pages(self, vm: uuid.UUID, request: wire.CopyRequest) -> tuple[int, list[int]]:
        time.sleep(0.5)
        return 0, list(request.pages)

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[wire.Buffer | None]:
        time.sleep(0.5)
        return super().get_pages(vm, pages)


def test_copy_timeout_overrides_the_request_timeout() -> None:
    service = SlowCopies()
    with FabricServer("127.0.0.1", 0, "host-b", KEY, service) as server, \
            client_for(server, request_timeout=0.2, request_connections=1) as client:
        assert client.copy_pages(VM, STAGING, "host-d", "x", 1, [1], timeout=5) == (0, [1])
        # The connection is back at request_timeout for the next request.
        with pytest.raises(FabricTimeoutError):
            client.get_pages(VM, [1])
        with pytest.raises(FabricTimeoutError):
            client.copy_pages(VM, STAGING, "host-d", "x", 1, [1])


class LyingCopies(CallsService):
    def copy_pages(self, vm: uuid.UUID, request: wire.CopyRequest) -> tuple[int, list[int]]:
        return 0, [page + 1 for page in request.pages]  # pages it was not asked for


def test_copy_reply_naming_other_pages() -> None:
    with FabricServer("127.0.0.1", 0, "host-b", KEY, LyingCopies()) as server, \
            client_for(server) as client:
        with pytest.raises(FabricProtocolError, match="missed 1 pages"):
            client.copy_pages(VM, STAGING, "host-d", "x", 1, [1])


# -- a copy between two real servers, S (AgentPageService) to D -----------------------------


@pytest.fixture
def sub_hosts() -> Iterator[tuple[FabricServer, SubHostStore, FabricServer, SubHostStore]]:
    """Sub-host S (host-s) and destination D (host-d), both agents' page services."""
    s_store, d_store = SubHostStore(10_000), SubHostStore(10_000)
    s_service = AgentPageService(s_store, "host-s", KEY, streams=2)
    d_service = AgentPageService(d_store, "host-d", KEY)
    with FabricServer("127.0.0.1", 0, "host-s", KEY, handler=s_service) as s_server, \
            FabricServer("127.0.0.1", 0, "host-d", KEY, handler=d_service) as d_server:
        yield s_server, s_store, d_server, d_store
    s_service.close()
    d_service.close()


def test_partial_migration_end_to_end(
        sub_hosts: tuple[FabricServer, SubHostStore, FabricServer, SubHostStore]) -> None:
    s_server, s_store, d_server, d_store = sub_hosts
    pages = list(range(0, 6000, 2))
    with FabricClient("host-m", "127.0.0.1", s_server.port, KEY, "host-s") as to_s, \
            FabricClient("host-m", "127.0.0.1", d_server.port, KEY, "host-d") as to_d:
        to_s.bulk_put(VM, ((p, bytes(PAGE_SIZE) if p % 10 == 0 else page(p)) for p in pages))
        to_d.put_pages(VM, [0, 1], [page(1000), page(1001)])  # an older copy on D
        asked = list(range(6000))
        copied, missing = to_s.copy_pages(VM, STAGING, "host-d", "127.0.0.1", d_server.port,
                                          asked, timeout=30)
        assert copied == len(pages)
        assert missing == list(range(1, 6000, 2))
        # D holds them under the staging key, not the VM, until the commit.
        assert d_store.get_pages(STAGING, [2, 4]) == [page(2), page(4)]
        assert d_store.get_pages(VM, [0, 2]) == [page(1000), None]
        assert to_d.commit_pages(VM, STAGING, pages) == len(pages)
        got = to_d.get_pages(VM, pages)
        assert all(bytes(view) == (bytes(PAGE_SIZE) if p % 10 == 0 else page(p))
                   for p, view in zip(pages, got, strict=True))
        assert bytes(to_d.get_pages(VM, [1])[0]) == page(1001)  # not copied, kept
        assert d_store.stats()["vms"] == {str(VM): len(pages) + 1}
        assert d_store.store.used == len(pages) + 1  # the old copy's slot went back
        # S still holds its copy until the main host drops it.
        assert to_s.drop_vm(VM) == len(pages) and s_store.store.used == 0
    assert s_server.stats().pages_out == len(pages)
    assert d_server.stats().pages_in == len(pages) + 2


def test_copy_to_an_unreachable_destination_is_an_error(
        sub_hosts: tuple[FabricServer, SubHostStore, FabricServer, SubHostStore]) -> None:
    s_server, _, _, _ = sub_hosts
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with FabricClient("host-m", "127.0.0.1", s_server.port, KEY, "host-s") as to_s:
        to_s.put_pages(VM, [1], [page(1)])
        start = time.monotonic()
        with pytest.raises(RemoteInternalError, match=f"host-d \\(127.0.0.1:{port}\\)"):
            to_s.copy_pages(VM, STAGING, "host-d", "127.0.0.1", port, [1, 2])
        assert time.monotonic() - start < 5
        # Nothing held: nothing to send, so no connection is tried.
        assert to_s.copy_pages(VM, STAGING, "host-d", "127.0.0.1", port, [2]) == (0, [2])
        # The connection to S is still usable.
        assert bytes(to_s.get_pages(VM, [1])[0]) == page(1)
    assert s_server.stats().errors == 1


def test_get_directory(server: FabricServer, service: RecordingService) -> None:
    """GET_DIRECTORY reaches the service's ``directory``; its refusal comes back."""
    with client_for(server) as client:
        with pytest.raises(RemoteBadRequestError, match="no main-host move"):
            client.get_directory(VM)
        codes = bytes(range(256)) * 64
        service.directory = lambda vm: (b'{"npages": 16384}', codes)  # type: ignore[method-assign]
        head, got = client.get_directory(VM)
        assert head == b'{"npages": 16384}' and got == codes
