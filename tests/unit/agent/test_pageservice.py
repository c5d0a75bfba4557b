"""The agent's page service: the store's requests, and copies to real destination servers."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from nova_ipmigrate.agent.pageservice import AgentPageService
from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric.errors import (
    FabricConnectionError,
    PagesNotHeldError,
    RemoteBadRequestError,
    RemoteInternalError,
)
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.fabric.service import InMemoryPageService
from nova_ipmigrate.fabric.wire import CopyRequest
from tests.unit.fabric.helpers import KEY, OTHER_KEY, VM

PAGE = 4096
STAGING = uuid.UUID("00000000-0000-4000-8000-0000000000bb")


def _page(tag: int) -> bytes:
    return tag.to_bytes(4, "little") * (PAGE // 4)


@pytest.fixture
def store() -> SubHostStore:
    return SubHostStore(64)


@pytest.fixture
def service(store: SubHostStore) -> Iterator[AgentPageService]:
    service = AgentPageService(store, "host-s", KEY, connect_timeout=1.0, request_timeout=2.0)
    yield service
    service.close()


@pytest.fixture
def dest() -> Iterator[tuple[FabricServer, InMemoryPageService]]:
    pages = InMemoryPageService()
    with FabricServer("127.0.0.1", 0, "host-d", KEY, pages) as server:
        yield server, pages


def _to(server: FabricServer, pages: list[int], key: uuid.UUID = STAGING,
        name: str = "host-d") -> CopyRequest:
    return CopyRequest(key, name, "127.0.0.1", server.port, pages)


def _unused_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])


def test_the_store_requests_go_to_the_store(service: AgentPageService,
                                            store: SubHostStore) -> None:
    service.put_pages(VM, [1, 2], [_page(1), _page(2)])
    service.put_pages(STAGING, [2], [_page(22)])
    assert service.get_pages(VM, [2, 3]) == [_page(2), None]
    assert service.commit_pages(VM, STAGING, [2]) == 1
    with pytest.raises(PagesNotHeldError):
        service.commit_pages(VM, STAGING, [2])
    assert store.get_pages(VM, [2]) == [_page(22)]
    service.drop_pages(VM, [1])
    assert service.drop_vm(VM) == 1 and store.store.used == 0


def test_copy_sends_held_pages_under_the_key(
        service: AgentPageService, dest: tuple[FabricServer, InMemoryPageService]) -> None:
    server, pages = dest
    service.put_pages(VM, [1, 2, 3], [_page(1), _page(2), _page(3)])
    assert service.copy_pages(VM, _to(server, [3, 4, 1])) == (2, [4])
    assert pages.pages_of(STAGING) == {3: _page(3), 1: _page(1)}
    assert pages.pages_of(VM) == {}
    # The client is kept for the next copy, whatever its key.
    other = uuid.uuid4()
    assert service.copy_pages(VM, _to(server, [2], key=other)) == (1, [])
    assert pages.pages_of(other) == {2: _page(2)}
    assert server.stats().connections == 2  # one request connection, one bulk stream
    assert len(service._clients) == 1


def test_copy_of_nothing_held_connects_nowhere(service: AgentPageService) -> None:
    request = CopyRequest(STAGING, "host-d", "127.0.0.1", _unused_port(), [1, 2])
    assert service.copy_pages(VM, request) == (0, [1, 2])
    assert service._clients == {}


def test_copy_to_this_host_is_refused(service: AgentPageService,
                                      dest: tuple[FabricServer, InMemoryPageService]) -> None:
    service.put_pages(VM, [1], [_page(1)])
    with pytest.raises(RemoteBadRequestError, match="this host"):
        service.copy_pages(VM, _to(dest[0], [1], name="host-s"))


def test_unreachable_destination(service: AgentPageService) -> None:
    service.put_pages(VM, [1], [_page(1)])
    port = _unused_port()
    request = CopyRequest(STAGING, "host-d", "127.0.0.1", port, [1])
    with pytest.raises(RemoteInternalError, match=f"host-d \\(127.0.0.1:{port}\\).*cannot "
                                                  f"connect"):
        service.copy_pages(VM, request)
    assert service._clients == {}


def test_silent_destination_times_out(service: AgentPageService) -> None:
    service.put_pages(VM, [1], [_page(1)])
    # Accepts connections (the kernel does) and never answers the handshake.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        request = CopyRequest(STAGING, "host-d", "127.0.0.1", silent.getsockname()[1], [1])
        start = time.monotonic()
        with pytest.raises(RemoteInternalError, match="host-d"):
            service.copy_pages(VM, request)
        assert time.monotonic() - start < 4


def test_destination_that_refuses_our_key(service: AgentPageService) -> None:
    service.put_pages(VM, [1], [_page(1)])
    with FabricServer("127.0.0.1", 0, "host-d", OTHER_KEY, InMemoryPageService()) as server:
        with pytest.raises(RemoteInternalError, match="FabricAuthError"):
            service.copy_pages(VM, _to(server, [1]))


def test_full_destination_drops_the_client_and_reports(service: AgentPageService) -> None:
    service.put_pages(VM, [1, 2, 3], [_page(1), _page(2), _page(3)])
    with FabricServer("127.0.0.1", 0, "host-d", KEY, InMemoryPageService(2)) as server:
        with pytest.raises(RemoteInternalError, match="StoreFullError"):
            service.copy_pages(VM, _to(server, [1, 2, 3]))
        assert service._clients == {}
        assert service.copy_pages(VM, _to(server, [1])) == (1, [])


def test_copy_after_the_destination_restarted(service: AgentPageService) -> None:
    pages = InMemoryPageService()
    service.put_pages(VM, [1], [_page(1)])
    first = FabricServer("127.0.0.1", 0, "host-d", KEY, pages)
    first.start()
    try:
        assert service.copy_pages(VM, _to(first, [1])) == (1, [])
    finally:
        first.stop()
    with pytest.raises(RemoteInternalError):
        service.copy_pages(VM, _to(first, [1]))
    assert service._clients == {}
    with FabricServer("127.0.0.1", first.port, "host-d", KEY, pages) as again:
        assert service.copy_pages(VM, _to(again, [1], key=uuid.uuid4())) == (1, [])


def test_concurrent_copies_share_one_client(
        service: AgentPageService, dest: tuple[FabricServer, InMemoryPageService]) -> None:
    server, pages = dest
    service.put_pages(VM, list(range(32)), [_page(p) for p in range(32)])
    keys = [uuid.uuid4() for _ in range(8)]
    errors: list[BaseException] = []

    def copy(key: uuid.UUID) -> None:
        try:
            assert service.copy_pages(VM, _to(server, list(range(32)), key=key)) == (32, [])
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=copy, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    assert all(pages.pages_of(key) == {p: _page(p) for p in range(32)} for key in keys)
    assert len(service._clients) == 1


def test_closed_service_refuses_copies(
        service: AgentPageService, dest: tuple[FabricServer, InMemoryPageService]) -> None:
    server, _ = dest
    service.put_pages(VM, [1], [_page(1)])
    service.copy_pages(VM, _to(server, [1]))
    (client,) = service._clients.values()
    service.close()
    assert service._clients == {}
    with pytest.raises(RemoteInternalError, match="shutting down"):
        service.copy_pages(VM, _to(server, [1]))
    with pytest.raises(FabricConnectionError, match="closed"):
        client.ping()


def test_bad_streams(store: SubHostStore) -> None:
    with pytest.raises(ValueError, match="streams"):
        AgentPageService(store, "host-s", KEY, streams=0)
