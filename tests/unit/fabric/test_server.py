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
    "copy list mismatch": (_header(T.COPY_PAGES, count=1, length=16 + 2 + 2 + 2 + 16)
                           + os.urandom(18) + b"\x01d\x01a" + b"\0" * 16),
    "copy name not UTF-8": (_header(T.COPY_PAGES, count=0, length=16 + 2 + 2 + 2)
                            + os.urandom(18) + b"\x01\xff\x01a"),
    "commit without key": _header(T.COMMIT_PAGES, count=1, length=8) + b"\0" * 8,
    "drop VM with payload": _header(T.DROP_VM, length=8) + b"\0" * 8,
    "copied sent as request": _header(T.COPIED, count=1),
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


# -- partial migration: COMMIT_PAGES, DROP_VM, COPY_PAGES ----------------------------------

KEY_VM = uuid.UUID("00000000-0000-4000-8000-0000000000ff")  # a staging key


def test_commit_moves_pages_from_the_key(served: Served, service: RecordingService) -> None:
    old, new = [os.urandom(PAGE_SIZE) for _ in range(2)], [os.urandom(PAGE_SIZE) for _ in range(3)]
    put(served, [1, 2], old)
    put(served, [1, 2, 3], new, vm=KEY_VM)
    ack = served.call(wire.encode_commit_pages(5, VM, KEY_VM, [1, 3]))
    assert (ack.header.type, ack.header.request_id, ack.header.vm, ack.header.count) == (
        T.ACK, 5, VM, 2)
    # Committed pages replace the VM's; the rest stays staged.
    assert service.pages_of(VM) == {1: new[0], 2: old[1], 3: new[2]}
    assert service.pages_of(KEY_VM) == {2: new[1]}
    assert service.held == 4
    stats = served.server.stats()
    assert (stats.pages_in, stats.pages_out) == (5, 0)  # a commit is no transfer


def test_commit_is_all_or_nothing(served: Served, service: RecordingService) -> None:
    put(served, [1, 2], [os.urandom(PAGE_SIZE)] * 2, vm=KEY_VM)
    reply = served.call(wire.encode_commit_pages(6, VM, KEY_VM, [1, 7, 2, 8]))
    code, pages, message = error_of(reply)
    assert code == ErrorCode.NOT_HELD and pages == [7, 8] and "2 of 4" in message
    assert service.pages_of(VM) == {} and set(service.pages_of(KEY_VM)) == {1, 2}
    assert served.call(wire.encode_empty(T.PING, 7)).header.type is T.PONG


def test_commit_to_the_key_itself_is_refused(served: Served, service: RecordingService) -> None:
    put(served, [1], [os.urandom(PAGE_SIZE)])
    code, _, message = error_of(served.call(wire.encode_commit_pages(2, VM, VM, [1])))
    assert code == ErrorCode.BAD_REQUEST and "VM itself" in message
    assert set(service.pages_of(VM)) == {1}


def test_drop_vm(served: Served, service: RecordingService) -> None:
    put(served, [1, 2, 3], [os.urandom(PAGE_SIZE)] * 3)
    put(served, [1], [os.urandom(PAGE_SIZE)], vm=KEY_VM)
    ack = served.call(wire.encode_empty(T.DROP_VM, 8, VM))
    assert (ack.header.type, ack.header.request_id, ack.header.vm, ack.header.count) == (
        T.ACK, 8, VM, 3)
    assert service.pages_of(VM) == {} and service.held == 1
    # An unknown key (or one dropped already) drops nothing; not an error.
    assert served.call(wire.encode_empty(T.DROP_VM, 9, VM)).header.count == 0
    assert served.call(wire.encode_empty(T.DROP_VM, 10, uuid.uuid4())).header.count == 0


def _copy(served: Served, pages: Sequence[int], key: uuid.UUID = KEY_VM,
          request_id: int = 1) -> wire.Frame:
    request = wire.CopyRequest(key, "host-d", "127.0.0.1", 9, list(pages))
    return served.call(wire.encode_copy_pages(request_id, VM, request))


def test_copy_not_supported_by_default(served: Served) -> None:
    code, _, message = error_of(_copy(served, [1]))
    assert code == ErrorCode.BAD_REQUEST and "not supported" in message


def test_copy_dispatch() -> None:
    copies: list[tuple[wire.CopyRequest, list[int]]] = []

    def copier(request: wire.CopyRequest, items: list[tuple[int, bytes]]) -> int:
        copies.append((request, [page for page, _ in items]))
        return len(items)

    service = RecordingService()
    service.copier = copier
    served = Served(service).authenticate()
    try:
        put(served, [1, 2, 3], [os.urandom(PAGE_SIZE)] * 3)
        reply = _copy(served, [3, 9, 1, 8], request_id=4)
        assert (reply.header.type, reply.header.request_id, reply.header.vm) == (T.COPIED, 4, VM)
        assert wire.decode_copied(reply.header, reply.payload) == (2, [9, 8])
        assert copies == [(wire.CopyRequest(KEY_VM, "host-d", "127.0.0.1", 9, [3, 9, 1, 8]),
                           [3, 1])]
        # Nothing held: nothing to send, the copier is not called.
        assert wire.decode_copied(*_frame_parts(_copy(served, [7]))) == (0, [7])
        assert len(copies) == 1
        assert served.server.stats().pages_out == 2  # copied pages leave this host
        code, _, _ = error_of(_copy(served, [1], key=VM))
        assert code == ErrorCode.BAD_REQUEST
    finally:
        served.finish()


def _frame_parts(frame: wire.Frame) -> tuple[wire.Header, memoryview]:
    return frame.header, frame.payload


class LyingCopier(RecordingService):
    def copy_pages(self, vm: uuid.UUID, request: wire.CopyRequest) -> tuple[int, list[int]]:
        return len(request.pages) + 1, []


def test_copy_service_claiming_too_many_pages() -> None:
    served = Served(LyingCopier()).authenticate()
    try:
        assert error_of(_copy(served, [1]))[0] == ErrorCode.INTERNAL
    finally:
        served.finish()
