"""Tests of nova_ipmigrate.fabric.server: dispatch to the PageService, errors, bad frames.

The server's per-connection loop runs over a socketpair; no listening socket.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence

import pytest

from nova_ipmigrate.fabric import auth, wire
from nova_ipmigrate.fabric.connection import Connection
from nova_ipmigrate.fabric.errors import ErrorCode, FabricConnectionError
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from tests.unit.fabric.helpers import KEY, OTHER_KEY, VM, RecordingService, send_raw

T = wire.MessageType


class Served:
    """A FabricServer's connection loop on one end of a socketpair, a client on the other."""

    def __init__(self, service: RecordingService, key: auth.SharedKey = KEY) -> None:
        self.service = service
        self.server = FabricServer("127.0.0.1", 0, "host-b", KEY, service)
        left, right = socket.socketpair()
        self.thread = threading.Thread(target=self.server._serve, args=(right, ("peer", 1)),
                                       daemon=True)
        self.thread.start()
        self.conn = Connection(left, "host-b")
        self.key = key

    def authenticate(self) -> Served:
        auth.client_handshake(self.conn, "host-a", "host-b", self.key)
        return self

    def call(self, frame: list[wire.Buffer]) -> wire.Frame:
        self.conn.send(frame)
        return self.conn.receive(keep=True)

    def finish(self) -> None:
        self.conn.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def service() -> RecordingService:
    return RecordingService()


@pytest.fixture
def served(service: RecordingService) -> Iterator[Served]:
    served = Served(service).authenticate()
    yield served
    served.finish()


def put(served: Served, pages: Sequence[int], data: Sequence[bytes], vm: uuid.UUID = VM,
        request_id: int = 1) -> wire.Frame:
    return served.call(wire.encode_pages(T.PUT_PAGES, request_id, vm, pages, data))


def error_of(frame: wire.Frame) -> tuple[int, list[int], str]:
    assert frame.header.type is T.ERROR
    return wire.decode_error(frame.header, frame.payload)


def test_put_get_drop(served: Served, service: RecordingService) -> None:
    data = [os.urandom(PAGE_SIZE), bytes(PAGE_SIZE), os.urandom(PAGE_SIZE)]
    ack = put(served, [5, 6, 7], data, request_id=11)
    assert (ack.header.type, ack.header.request_id, ack.header.count) == (T.ACK, 11, 3)
    assert service.pages_of(VM) == dict(zip([5, 6, 7], data, strict=True))

    reply = served.call(wire.encode_page_list(T.GET_PAGES, 12, VM, [7, 6]))
    assert (reply.header.type, reply.header.request_id, reply.header.vm) == (T.PAGES, 12, VM)
    pages, got = wire.decode_pages(reply.header, reply.payload)
    assert pages == [7, 6] and [bytes(page) for page in got] == [data[2], data[1]]
    # The zero page crossed as one bit.
    assert reply.header.length == 2 * 8 + 1 + PAGE_SIZE

    ack = served.call(wire.encode_page_list(T.DROP_PAGES, 13, VM, [5, 99]))
    assert (ack.header.type, ack.header.count) == (T.ACK, 2)
    assert set(service.pages_of(VM)) == {6, 7}
    stats = served.server.stats()
    assert (stats.requests, stats.pages_in, stats.pages_out, stats.errors) == (3, 3, 2, 0)
    assert stats.bytes_in > 2 * PAGE_SIZE and stats.bytes_out > PAGE_SIZE


def test_ping(served: Served) -> None:
    reply = served.call(wire.encode_empty(T.PING, 77))
    assert (reply.header.type, reply.header.request_id) == (T.PONG, 77)


def test_not_held_fails_the_whole_request(served: Served) -> None:
    put(served, [1], [os.urandom(PAGE_SIZE)])
    reply = served.call(wire.encode_page_list(T.GET_PAGES, 2, VM, [1, 2, 3]))
    code, pages, message = error_of(reply)
    assert code == ErrorCode.NOT_HELD and pages == [2, 3] and "2 of 3" in message
    assert reply.header.request_id == 2
    # Another VM's pages are not this one's.
    reply = served.call(wire.encode_page_list(T.GET_PAGES, 3, uuid.uuid4(), [1]))
    assert error_of(reply)[0] == ErrorCode.NOT_HELD
    # The connection still serves.
    assert served.call(wire.encode_empty(T.PING, 4)).header.type is T.PONG


def test_store_full_stores_nothing() -> None:
    service = RecordingService(capacity_pages=2)
    served = Served(service).authenticate()
    try:
        put(served, [1], [os.urandom(PAGE_SIZE)])
        reply = put(served, [2, 3], [os.urandom(PAGE_SIZE)] * 2)
        code, _, message = error_of(reply)
        assert code == ErrorCode.STORE_FULL and "store full" in message
        assert set(service.pages_of(VM)) == {1}
        assert served.server.stats().errors == 1
        # Overwriting a held page needs no new slot.
        assert put(served, [1, 2], [os.urandom(PAGE_SIZE)] * 2).header.type is T.ACK
    finally:
        served.finish()


class FailingService(RecordingService):
    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[wire.Buffer | None]:
        raise RuntimeError("secret detail")

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        raise KeyError("x")


class ShortService(RecordingService):
    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[wire.Buffer | None]:
        return [bytes(PAGE_SIZE)]


def test_service_failure_is_an_internal_error() -> None:
    served = Served(FailingService()).authenticate()
    try:
        code, _, message = error_of(served.call(
            wire.encode_page_list(T.GET_PAGES, 1, VM, [1])))
        assert code == ErrorCode.INTERNAL and "RuntimeError" in message
        assert "secret detail" not in message
        assert error_of(served.call(
            wire.encode_page_list(T.DROP_PAGES, 2, VM, [1])))[0] == ErrorCode.INTERNAL
        assert served.call(wire.encode_empty(T.PING, 3)).header.type is T.PONG
    finally:
        served.finish()


def test_service_returning_too_few_pages() -> None:
    served = Served(ShortService()).authenticate()
    try:
        reply = served.call(wire.encode_page_list(T.GET_PAGES, 1, VM, [1, 2]))
        assert error_of(reply)[0] == ErrorCode.INTERNAL
    finally:
        served.finish()


def _header(type_: int = T.PUT_PAGES, count: int = 0, length: int = 0, *,
            magic: int = wire.MAGIC, version: int = wire.VERSION, flags: int = 0) -> bytes:
    return wire.HEADER.pack(magic, version, type_, flags, 1, VM.bytes, count, length)


def _put_body(count: int, bitmap: bytes, data_pages: int) -> bytes:
    return (struct.pack(f"<{count}Q", *range(count)) + bitmap
            + os.urandom(PAGE_SIZE) * data_pages)


_BAD_BODY = _put_body(2, b"\x00", 1)  # says 2 pages of data, carries 1

MALFORMED = {
    "bad magic": _header(magic=0xDEADBEEF),
    "bad version": _header(version=0),
    "unknown type": _header(type_=200),
    "unknown flags": _header(T.PING, flags=0x8000),
    "too many pages": _header(T.PUT_PAGES, count=wire.MAX_PAGES + 1,
                              length=(wire.MAX_PAGES + 1) * 8 + 513),
    "payload too big": _header(T.PUT_PAGES, count=1, length=wire.MAX_PAYLOAD + 4096),
    "list length mismatch": _header(T.DROP_PAGES, count=3, length=16) + b"\0" * 16,
    "bitmap/data mismatch": _header(T.PUT_PAGES, count=2, length=len(_BAD_BODY)) + _BAD_BODY,
    "padding bits set": (_header(T.PUT_PAGES, count=2, length=17 + 2 * PAGE_SIZE)
                         + _put_body(2, b"\x80", 2)),
    "reply sent as request": _header(T.ACK, count=1),
    "handshake after auth": _header(T.HELLO, length=40) + os.urandom(32) + b"host-xyz",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_frame_applies_nothing_and_closes(raw: bytes) -> None:
    service = RecordingService()
    served = Served(service).authenticate()
    put(served, [1], [os.urandom(PAGE_SIZE)])
    service.calls.clear()
    send_raw(served.conn, raw)
    served.thread.join(5)
    assert not served.thread.is_alive(), "the server must hang up"
    assert service.calls == []
    assert set(service.pages_of(VM)) == {1}
    assert served.server.stats().protocol_errors == 1
    # The client learns why (or sees the close), never a normal reply.
    try:
        notice = served.conn.receive()
    except FabricConnectionError:
        pass
    else:
        assert error_of(notice)[0] == ErrorCode.PROTOCOL
    served.finish()


def test_truncated_frame_applies_nothing() -> None:
    service = RecordingService()
    served = Served(service).authenticate()
    raw = b"".join(bytes(part) for part in wire.encode_pages(
        T.PUT_PAGES, 1, VM, [1, 2], [os.urandom(PAGE_SIZE)] * 2))
    send_raw(served.conn, raw[:-1])
    served.conn.sock.shutdown(socket.SHUT_WR)
    served.thread.join(5)
    assert service.calls == [] and service.held == 0
    assert served.server.stats().protocol_errors == 1
    served.finish()


def test_wrong_key_counted_and_never_served() -> None:
    service = RecordingService()
    served = Served(service, key=OTHER_KEY)
    with pytest.raises(auth.FabricAuthError):
        served.authenticate()
    served.thread.join(5)
    assert served.server.stats().auth_failures == 1
    assert service.calls == []
    served.finish()
