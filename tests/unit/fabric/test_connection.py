"""Tests of nova_ipmigrate.fabric.connection: framing, vectored sends, validation, closing."""

from __future__ import annotations

import os
import socket
import time

import pytest

from nova_ipmigrate.fabric import wire
from nova_ipmigrate.fabric.connection import IOV_MAX, Connection, TruncatedFrameError
from nova_ipmigrate.fabric.errors import (
    ErrorCode,
    FabricConnectionError,
    FabricProtocolError,
    FabricTimeoutError,
)
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from tests.unit.fabric.helpers import VM, authenticated_pair, in_thread, send_raw

T = wire.MessageType


def pages_frame(count: int, start: int = 0, zero_every: int = 0,
                request_id: int = 1) -> tuple[list[wire.Buffer], list[bytes]]:
    data = [bytes(PAGE_SIZE) if zero_every and i % zero_every == 0 else os.urandom(PAGE_SIZE)
            for i in range(count)]
    pages = list(range(start, start + count))
    return wire.encode_pages(T.PUT_PAGES, request_id, VM, pages, data), data


def check(frame: wire.Frame, data: list[bytes], start: int = 0) -> None:
    pages, got = wire.decode_pages(frame.header, frame.payload)
    assert pages == list(range(start, start + len(data)))
    assert [bytes(page) for page in got] == data


@pytest.mark.parametrize("count", [1, 15, 16, 17, 300])
def test_round_trip_small_and_large(count: int) -> None:
    # 15 pages fit the 64 KiB read-ahead buffer, 17 do not.
    client, server = authenticated_pair()
    frame, data = pages_frame(count, zero_every=4)
    received = in_thread(lambda: client.send(frame), server.receive)
    check(received, data)
    assert server.bytes_in == client.bytes_out > 0


def test_more_buffers_than_iov_max() -> None:
    client, server = authenticated_pair()
    frame, data = pages_frame(wire.MAX_PAGES)
    assert len(frame) > IOV_MAX
    check(in_thread(lambda: client.send(frame), server.receive), data)


def test_partial_sends_are_completed() -> None:
    client, server = authenticated_pair()
    # Python-level timeout mode: the socket is non-blocking underneath, so sendmsg
    # returns after what fits in the socket buffer.
    client.sock.settimeout(10)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frame, data = pages_frame(wire.MAX_PAGES, zero_every=3)

    def slow_receive() -> wire.Frame:
        time.sleep(0.05)
        return server.receive()

    check(in_thread(lambda: client.send(frame), slow_receive), data)


@pytest.mark.parametrize("counts", [
    [1, 2, 40, 1, 3, 20, 1],
    # Frames just under the read-ahead size: most arrive split across two reads, so
    # the partial frame is moved to the front of the buffer.
    [10] * 12,
    [15, 1, 14, 2, 15, 3, 13, 15, 15],
])
def test_pipelined_frames_in_order(counts: list[int]) -> None:
    client, server = authenticated_pair()
    sent = [pages_frame(count, start=1000 * i, request_id=i, zero_every=3)
            for i, count in enumerate(counts)]

    def send_all() -> None:
        for frame, _ in sent:
            client.send(frame)

    def receive_all() -> list[wire.Frame]:
        return [server.receive(keep=True) for _ in sent]

    frames = in_thread(send_all, receive_all)
    for i, (frame, (_, data)) in enumerate(zip(frames, sent, strict=True)):
        assert frame.header.request_id == i
        check(frame, data, start=1000 * i)


def test_fragmented_delivery() -> None:
    client, server = authenticated_pair()
    frame, data = pages_frame(2)
    raw = b"".join(bytes(part) for part in frame)

    def dribble() -> None:
        for offset in range(0, len(raw), 1000):
            send_raw(client, raw[offset:offset + 1000])
            time.sleep(0.001)

    check(in_thread(dribble, server.receive), data)


def test_payload_reused_unless_kept() -> None:
    client, server = authenticated_pair()
    first, first_data = pages_frame(1, request_id=1)
    second, _ = pages_frame(1, start=10, request_id=2)
    client.send(first)
    client.send(second)
    kept = server.receive(keep=True)
    reused = server.receive()
    assert kept.payload.obj is not reused.payload.obj
    check(kept, first_data)


def test_clean_close_at_boundary_is_not_a_protocol_error() -> None:
    client, server = authenticated_pair()
    client.close()
    with pytest.raises(FabricConnectionError) as info:
        server.receive()
    assert not isinstance(info.value, FabricProtocolError)
    assert server.closed


@pytest.mark.parametrize("cut", [10, wire.HEADER_SIZE, wire.HEADER_SIZE + 8,
                                 wire.HEADER_SIZE + 100_000])
def test_truncated_stream(cut: int) -> None:
    client, server = authenticated_pair()
    frame, _ = pages_frame(30)
    raw = b"".join(bytes(part) for part in frame)

    def send_cut() -> None:
        send_raw(client, raw[:cut])
        client.close()

    with pytest.raises(TruncatedFrameError) as info:
        in_thread(send_cut, server.receive)
    assert isinstance(info.value, FabricProtocolError)
    assert server.closed


def test_malformed_frame_closes_and_tells_the_peer() -> None:
    client, server = authenticated_pair()
    send_raw(client, wire.HEADER.pack(wire.MAGIC, 9, T.PING, 0, 1, VM.bytes, 0, 0))
    with pytest.raises(FabricProtocolError, match="version 9"):
        server.receive()
    assert server.closed
    notice = client.receive()
    assert notice.header.type is T.ERROR
    code, _, message = wire.decode_error(notice.header, notice.payload)
    assert code == ErrorCode.PROTOCOL and "version 9" in message


def test_receive_timeout() -> None:
    client, server = authenticated_pair()
    server.settimeout(0.1)
    with pytest.raises(FabricTimeoutError):
        server.receive()
    assert server.closed


def test_timeout_none_waits() -> None:
    client, server = authenticated_pair()
    server.settimeout(0.05)
    server.settimeout(None)
    frame, data = pages_frame(1)

    def late_send() -> None:
        time.sleep(0.2)
        client.send(frame)

    check(in_thread(late_send, server.receive), data)


def test_send_on_closed_connection() -> None:
    client, _ = authenticated_pair()
    client.close()
    client.close()  # idempotent
    with pytest.raises(FabricConnectionError, match="closed"):
        client.send(wire.encode_empty(T.PING, 1))


def test_send_to_vanished_peer() -> None:
    client, server = authenticated_pair()
    server.close()
    frame, _ = pages_frame(100)
    with pytest.raises(FabricConnectionError):
        for _ in range(10):
            client.send(frame)
    assert client.closed


def test_repr_names_peer() -> None:
    left, right = socket.socketpair()
    conn = Connection(left, "host-x")
    assert "host-x" in repr(conn)
    conn.close()
    right.close()
    assert "closed" in repr(conn)


def test_bulk_and_interactive_connections_carry_their_traffic_class() -> None:
    import socket

    from nova_ipmigrate.fabric.connection import TOS_BULK, TOS_INTERACTIVE, tune_socket
    for bulk, tos in ((True, TOS_BULK), (False, TOS_INTERACTIVE)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            tune_socket(s, bulk=bulk)
            assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == tos
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
