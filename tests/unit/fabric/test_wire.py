"""Tests of the fabric wire format (nova_ipmigrate.fabric.wire): layouts, round trips, limits."""

from __future__ import annotations

import os
import struct
import uuid

import pytest

from nova_ipmigrate.fabric import wire
from nova_ipmigrate.fabric.errors import ErrorCode, FabricProtocolError
from nova_ipmigrate.memfs.protocol import PAGE_SIZE

VM = uuid.UUID("12345678-1234-5678-1234-567812345678")
T = wire.MessageType


def joined(buffers: list[wire.Buffer]) -> bytes:
    return b"".join(bytes(part) for part in buffers)


def split(raw: bytes, authenticated: bool = True) -> tuple[wire.Header, memoryview]:
    """Parse and fully check a frame as the connection does."""
    header = wire.parse_header(raw[:wire.HEADER_SIZE], authenticated)
    payload = memoryview(raw)[wire.HEADER_SIZE:]
    assert len(payload) == header.length
    wire.check_payload(header, payload)
    return header, payload


def raw_header(type_: int = T.PING, count: int = 0, length: int = 0, *, magic: int = wire.MAGIC,
               version: int = wire.VERSION, flags: int = 0, request_id: int = 1) -> bytes:
    return wire.HEADER.pack(magic, version, type_, flags, request_id, VM.bytes, count, length)


def test_header_layout() -> None:
    assert wire.HEADER_SIZE == 40
    assert struct.pack("<I", wire.MAGIC) == b"IPMF"


def test_limits_fit_a_full_message() -> None:
    full = wire.MAX_PAGES * (8 + PAGE_SIZE) + wire.bitmap_size(wire.MAX_PAGES)
    assert full <= wire.MAX_PAYLOAD


def test_header_round_trip() -> None:
    raw = wire.encode_header(T.GET_PAGES, 2**64 - 1, VM, 3, 24)
    assert wire.parse_header(raw) == wire.Header(T.GET_PAGES, 2**64 - 1, VM, 3, 24)


@pytest.mark.parametrize("type_", [T.GET_PAGES, T.DROP_PAGES])
def test_page_list_round_trip(type_: wire.MessageType) -> None:
    pages = [0, 1, 2**64 - 1, 7, 7]
    header, payload = split(joined(wire.encode_page_list(type_, 9, VM, pages)))
    assert (header.type, header.request_id, header.vm, header.count) == (type_, 9, VM, 5)
    assert wire.decode_page_list(header, payload) == pages


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 100])
@pytest.mark.parametrize("zero_every", [1, 2, 3, 0])
def test_pages_round_trip_with_zero_elision(count: int, zero_every: int) -> None:
    pages = [1000 + 3 * i for i in range(count)]
    data = [bytes(PAGE_SIZE) if zero_every and i % zero_every == 0 else os.urandom(PAGE_SIZE)
            for i in range(count)]
    raw = joined(wire.encode_pages(T.PUT_PAGES, 4, VM, pages, data))
    zeros = sum(1 for page in data if page == wire.ZERO_PAGE)
    # Elided pages cost one bit, not 4 KiB.
    assert len(raw) == (wire.HEADER_SIZE + 8 * count + wire.bitmap_size(count)
                        + (count - zeros) * PAGE_SIZE)
    header, payload = split(raw)
    got_pages, got_data = wire.decode_pages(header, payload)
    assert got_pages == pages
    assert [bytes(page) for page in got_data] == data
    assert all(page is wire.ZERO_PAGE for page, orig in zip(got_data, data, strict=True)
               if orig == wire.ZERO_PAGE)


def test_pages_are_sent_as_given_not_copied() -> None:
    page = bytearray(os.urandom(PAGE_SIZE))
    view = memoryview(page)
    buffers = wire.encode_pages(T.PAGES, 1, VM, [5], [view])
    assert buffers[-1] is view


def test_non_zero_data_are_views_of_the_payload() -> None:
    raw = joined(wire.encode_pages(T.PAGES, 1, VM, [5], [os.urandom(PAGE_SIZE)]))
    header, payload = split(raw)
    _, data = wire.decode_pages(header, payload)
    assert isinstance(data[0], memoryview) and data[0].obj is payload.obj


def test_zero_detection() -> None:
    almost = bytearray(PAGE_SIZE)
    almost[-1] = 1
    data: list[wire.Buffer] = [memoryview(bytearray(PAGE_SIZE)), almost, memoryview(almost),
                               bytes(PAGE_SIZE)]
    header, payload = split(joined(wire.encode_pages(T.PAGES, 1, VM, [1, 2, 3, 4], data)))
    assert payload[8 * 4] == 0b1001  # pages 1 and 4 elided
    assert header.length == 8 * 4 + 1 + 2 * PAGE_SIZE


def test_error_round_trip() -> None:
    raw = joined(wire.encode_error(3, VM, ErrorCode.NOT_HELD, "gone: ünïcode", [4, 5]))
    header, payload = split(raw)
    assert header.type is T.ERROR and header.count == 2
    assert wire.decode_error(header, payload) == (ErrorCode.NOT_HELD, [4, 5], "gone: ünïcode")


def test_error_text_is_capped() -> None:
    header, payload = split(joined(wire.encode_error(3, VM, ErrorCode.INTERNAL, "x" * 5000)))
    assert len(wire.decode_error(header, payload)[2]) == wire.MAX_ERROR_TEXT


def test_handshake_round_trips() -> None:
    nonce, mac = os.urandom(32), os.urandom(32)
    header, payload = split(joined(wire.encode_hello(nonce, "host-a")), authenticated=False)
    assert header.type is T.HELLO and wire.decode_hello(payload) == (nonce, "host-a")
    header, payload = split(joined(wire.encode_challenge(nonce, mac, "hôst-b")),
                            authenticated=False)
    assert wire.decode_challenge(payload) == (nonce, mac, "hôst-b")
    header, payload = split(joined(wire.encode_auth(mac)), authenticated=False)
    assert header.type is T.AUTH and bytes(payload) == mac


@pytest.mark.parametrize("type_", [T.AUTH_OK, T.PING, T.PONG])
def test_empty_messages(type_: wire.MessageType) -> None:
    header, _ = split(joined(wire.encode_empty(type_, 5)), authenticated=False
                      if type_ is T.AUTH_OK else True)
    assert (header.type, header.request_id, header.count, header.length) == (type_, 5, 0, 0)


def test_ack_carries_a_count() -> None:
    header, _ = split(joined(wire.encode_empty(T.ACK, 5, VM, 256)))
    assert header.count == 256
    # The pages a DROP_VM dropped: not limited to one message's pages.
    header, _ = split(joined(wire.encode_empty(T.ACK, 5, VM, 2**32 - 1)))
    assert header.count == 2**32 - 1


# -- encoders refuse what the decoder would reject -----------------------------------------


def test_encode_rejects_too_many_pages() -> None:
    with pytest.raises(ValueError, match="more than"):
        wire.encode_page_list(T.GET_PAGES, 1, VM, list(range(wire.MAX_PAGES + 1)))


def test_encode_rejects_short_page() -> None:
    with pytest.raises(ValueError, match="has 4095 bytes"):
        wire.encode_pages(T.PUT_PAGES, 1, VM, [1], [bytes(PAGE_SIZE - 1)])


def test_encode_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="2 page numbers but 1"):
        wire.encode_pages(T.PUT_PAGES, 1, VM, [1, 2], [bytes(PAGE_SIZE)])


@pytest.mark.parametrize("page", [-1, 2**64])
def test_encode_rejects_bad_page_numbers(page: int) -> None:
    with pytest.raises(ValueError, match="u64"):
        wire.encode_page_list(T.GET_PAGES, 1, VM, [page])


@pytest.mark.parametrize("name", ["", "x" * 256])
def test_encode_rejects_bad_host_names(name: str) -> None:
    with pytest.raises(ValueError, match="host name"):
        wire.encode_hello(os.urandom(32), name)


# -- malformed headers ------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "match"), [
    (raw_header(magic=0x12345678), "bad magic"),
    (raw_header(version=2), "version 2"),
    (raw_header(type_=99), "unknown message type 99"),
    (raw_header(flags=1), "unknown flags"),
    (raw_header(T.GET_PAGES, count=wire.MAX_PAGES + 1, length=8 * (wire.MAX_PAGES + 1)),
     "more than 4096"),
    (raw_header(T.PUT_PAGES, count=1, length=wire.MAX_PAYLOAD + 1), "exceeds"),
    (raw_header(T.GET_PAGES, count=2, length=8), "cannot have a 8-byte payload"),
    (raw_header(T.DROP_PAGES, count=1, length=0), "cannot have"),
    # A list of 2 pages and its bitmap take 17 bytes; at most 2 pages of data follow.
    (raw_header(T.PUT_PAGES, count=2, length=16), "cannot have"),
    (raw_header(T.PUT_PAGES, count=2, length=17 + 3 * PAGE_SIZE), "cannot have"),
    (raw_header(T.PUT_PAGES, count=2, length=17 + 100), "cannot have"),  # not whole pages
    (raw_header(T.PING, count=1), "cannot have"),
    (raw_header(T.PONG, length=4), "cannot have"),
    (raw_header(T.ACK, length=8), "cannot have"),
    (raw_header(T.ERROR, count=2, length=12), "cannot have"),
    (raw_header(T.ERROR, length=4 + wire.MAX_ERROR_TEXT + 1), "cannot have"),
    (b"\0" * 39, "header of 39 bytes"),
])
def test_malformed_headers(raw: bytes, match: str) -> None:
    with pytest.raises(FabricProtocolError, match=match):
        wire.parse_header(raw)


@pytest.mark.parametrize(("raw", "match"), [
    (raw_header(T.GET_PAGES, count=1, length=8), "GET_PAGES before authentication"),
    (raw_header(T.PUT_PAGES, count=0, length=0), "before authentication"),
    (raw_header(T.HELLO, length=wire.MAX_HANDSHAKE_PAYLOAD + 1), "exceeds 1024"),
    (raw_header(T.HELLO, length=32), "cannot have"),  # no name
    (raw_header(T.HELLO, length=32 + 256), "cannot have"),  # name too long
    (raw_header(T.CHALLENGE, length=64), "cannot have"),
    (raw_header(T.AUTH, length=31), "cannot have"),
    (raw_header(T.AUTH_OK, length=1), "cannot have"),
])
def test_malformed_headers_before_authentication(raw: bytes, match: str) -> None:
    with pytest.raises(FabricProtocolError, match=match):
        wire.parse_header(raw, authenticated=False)


# -- malformed payloads -------------------------------------------------------------------


def _pages_frame(count: int, bitmap: bytes, data_pages: int) -> bytes:
    body = struct.pack(f"<{count}Q", *range(count)) + bitmap + os.urandom(PAGE_SIZE) * data_pages
    return raw_header(T.PUT_PAGES, count=count, length=len(body)) + body


@pytest.mark.parametrize(("raw", "match"), [
    # Bitmap says 1 zero page of 2, so 1 page of data, but 2 are there (or 0).
    (_pages_frame(2, b"\x01", 2), "need 4113 payload bytes, got 8209"),
    (_pages_frame(2, b"\x01", 0), "need 4113 payload bytes, got 17"),
    (_pages_frame(2, b"\x00", 1), "need 8209 payload bytes, got 4113"),
    # Bits past the last page set.
    (_pages_frame(2, b"\x04", 2), "past the last page"),
    (_pages_frame(9, b"\x00\x02", 9), "past the last page"),
])
def test_malformed_page_data(raw: bytes, match: str) -> None:
    with pytest.raises(FabricProtocolError, match=match):
        split(raw)


def test_malformed_host_name() -> None:
    body = os.urandom(32) + b"\xff\xfe"
    raw = raw_header(T.HELLO, length=len(body)) + body
    with pytest.raises(FabricProtocolError, match="not UTF-8"):
        split(raw, authenticated=False)


# -- partial migration: COPY_PAGES, COPIED, COMMIT_PAGES, DROP_VM --------------------------

KEY = uuid.UUID("87654321-4321-8765-4321-876543218765")


def _copy_body(name: bytes = b"host-d", address: bytes = b"10.0.0.4", pages: int = 2, *,
               name_len: int | None = None, address_len: int | None = None,
               port: int = 47800, extra: bytes = b"") -> bytes:
    return (KEY.bytes + struct.pack("<H", port)
            + bytes([len(name) if name_len is None else name_len]) + name
            + bytes([len(address) if address_len is None else address_len]) + address
            + struct.pack(f"<{pages}Q", *range(pages)) + extra)


def _copy_frame(body: bytes, count: int = 2) -> bytes:
    return raw_header(T.COPY_PAGES, count=count, length=len(body)) + body


def test_new_requests_and_their_replies() -> None:
    assert wire.REPLY_TO[T.COPY_PAGES] is T.COPIED
    assert wire.REPLY_TO[T.COMMIT_PAGES] is T.ACK
    assert wire.REPLY_TO[T.DROP_VM] is T.ACK
    assert T.COPIED not in wire.REPLY_TO
    assert (T.COPY_PAGES, T.COPIED, T.COMMIT_PAGES, T.DROP_VM) == (16, 17, 18, 19)


@pytest.mark.parametrize("pages", [[], [0, 2**64 - 1, 7, 7], list(range(wire.MAX_PAGES))])
@pytest.mark.parametrize(("name", "address"), [("host-d", "10.0.0.4"), ("hôst-d", "fe80::1"),
                                                ("d" * 255, "a" * 255), ("d", "a")])
def test_copy_pages_round_trip(pages: list[int], name: str, address: str) -> None:
    request = wire.CopyRequest(KEY, name, address, 65535, pages)
    raw = joined(wire.encode_copy_pages(7, VM, request))
    assert len(raw) == (wire.HEADER_SIZE + 16 + 2 + 2 + len(name.encode()) + len(address)
                        + 8 * len(pages))
    header, payload = split(raw)
    assert (header.type, header.request_id, header.vm, header.count) == (
        T.COPY_PAGES, 7, VM, len(pages))
    assert wire.decode_copy_pages(header, payload) == request


def test_copy_pages_layout() -> None:
    raw = joined(wire.encode_copy_pages(
        1, VM, wire.CopyRequest(KEY, "host-d", "10.0.0.4", 47800, [0, 1])))
    assert raw[wire.HEADER_SIZE:] == _copy_body()


@pytest.mark.parametrize(("missing", "copied"), [([], 0), ([], wire.MAX_PAGES),
                                                 ([3, 2**64 - 1], 5),
                                                 (list(range(wire.MAX_PAGES)), 0)])
def test_copied_round_trip(missing: list[int], copied: int) -> None:
    header, payload = split(joined(wire.encode_copied(4, VM, copied, missing)))
    assert (header.type, header.request_id, header.vm, header.count) == (T.COPIED, 4, VM, copied)
    assert wire.decode_copied(header, payload) == (copied, missing)


@pytest.mark.parametrize("pages", [[], [1, 2**64 - 1, 1], list(range(wire.MAX_PAGES))])
def test_commit_pages_round_trip(pages: list[int]) -> None:
    raw = joined(wire.encode_commit_pages(5, VM, KEY, pages))
    assert raw[wire.HEADER_SIZE:wire.HEADER_SIZE + 16] == KEY.bytes
    header, payload = split(raw)
    assert (header.type, header.request_id, header.vm, header.count) == (
        T.COMMIT_PAGES, 5, VM, len(pages))
    assert wire.decode_commit_pages(header, payload) == (KEY, pages)


def test_drop_vm_is_empty() -> None:
    header, payload = split(joined(wire.encode_empty(T.DROP_VM, 6, KEY)))
    assert (header.type, header.request_id, header.vm, header.count, header.length) == (
        T.DROP_VM, 6, KEY, 0, 0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": ""}, "host name"),
    ({"name": "x" * 256}, "host name"),
    ({"address": ""}, "address"),
    ({"address": "a" * 256}, "address"),
    ({"port": -1}, "u16"),
    ({"port": 65536}, "u16"),
    ({"pages": [-1]}, "u64"),
    ({"pages": list(range(wire.MAX_PAGES + 1))}, "more than"),
])
def test_encode_copy_pages_rejects(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {"key": KEY, "name": "host-d", "address": "10.0.0.4",
                                 "port": 1, "pages": [1]}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        wire.encode_copy_pages(1, VM, wire.CopyRequest(**fields))  # type: ignore[arg-type]


def test_encode_copied_and_commit_reject() -> None:
    with pytest.raises(ValueError, match="more than"):
        wire.encode_copied(1, VM, 1, list(range(wire.MAX_PAGES)))
    with pytest.raises(ValueError, match="-1 pages copied"):
        wire.encode_copied(1, VM, -1, [])
    with pytest.raises(ValueError, match="u64"):
        wire.encode_copied(1, VM, 0, [2**64])
    with pytest.raises(ValueError, match="more than"):
        wire.encode_commit_pages(1, VM, KEY, list(range(wire.MAX_PAGES + 1)))


@pytest.mark.parametrize(("raw", "match"), [
    # COPY_PAGES: the fixed 20 bytes, two strings of at least 1 byte, then the list.
    (raw_header(T.COPY_PAGES, count=0, length=21), "cannot have a 21-byte"),
    (raw_header(T.COPY_PAGES, count=2, length=20 + 2 + 15), "cannot have"),
    (raw_header(T.COPY_PAGES, count=0, length=20 + 255 + 255 + 1), "cannot have"),
    (raw_header(T.COPY_PAGES, count=wire.MAX_PAGES + 1, length=22 + 8 * (wire.MAX_PAGES + 1)),
     "more than 4096"),
    # COPIED: whole page numbers, copied + missing at most one request's pages.
    (raw_header(T.COPIED, count=1, length=7), "cannot have"),
    (raw_header(T.COPIED, count=1, length=8 * wire.MAX_PAGES), "cannot have"),
    (raw_header(T.COPIED, count=0, length=8 * (wire.MAX_PAGES + 1)), "cannot have"),
    (raw_header(T.COPIED, count=wire.MAX_PAGES + 1), "more than 4096"),
    # COMMIT_PAGES: exactly the key and the list.
    (raw_header(T.COMMIT_PAGES, count=0, length=0), "cannot have"),
    (raw_header(T.COMMIT_PAGES, count=1, length=16), "cannot have"),
    (raw_header(T.COMMIT_PAGES, count=1, length=25), "cannot have"),
    (raw_header(T.COMMIT_PAGES, count=0, length=8), "cannot have"),
    (raw_header(T.COMMIT_PAGES, count=wire.MAX_PAGES + 1, length=16 + 8 * (wire.MAX_PAGES + 1)),
     "more than 4096"),
    # DROP_VM: nothing at all.
    (raw_header(T.DROP_VM, count=1), "cannot have"),
    (raw_header(T.DROP_VM, length=8), "cannot have"),
])
def test_malformed_partial_migration_headers(raw: bytes, match: str) -> None:
    with pytest.raises(FabricProtocolError, match=match):
        wire.parse_header(raw)


@pytest.mark.parametrize("type_", [T.COPY_PAGES, T.COPIED, T.COMMIT_PAGES, T.DROP_VM])
def test_partial_migration_needs_authentication(type_: wire.MessageType) -> None:
    with pytest.raises(FabricProtocolError, match="before authentication"):
        wire.parse_header(raw_header(type_), authenticated=False)


@pytest.mark.parametrize(("raw", "match"), [
    (_copy_frame(_copy_body(name=b"", address=b"10.0.0.4x")), "name is empty"),
    (_copy_frame(_copy_body(address=b"", name=b"host-dx")), "address is empty"),
    # The name's length runs past the payload (no room for the address length).
    (_copy_frame(_copy_body(name_len=200)), "overruns"),
    # Lengths that do not add up: the page list would be too short or too long.
    # (A wrong name length also moves the byte read as the address's length.)
    (_copy_frame(_copy_body(name_len=7)), "page list takes -?[0-9]+ bytes, not 16"),
    (_copy_frame(_copy_body(name_len=5)), "page list takes -?[0-9]+ bytes, not 16"),
    (_copy_frame(_copy_body(address_len=9)), "page list takes 15 bytes, not 16"),
    (_copy_frame(_copy_body(address_len=255)), "not 16"),
    (_copy_frame(_copy_body(address_len=0)), "address is empty"),
    (_copy_frame(_copy_body(extra=b"\0" * 8)), "takes 24 bytes, not 16"),
    (_copy_frame(_copy_body(pages=1), count=2), "takes 8 bytes, not 16"),
    (_copy_frame(_copy_body(pages=3), count=2), "takes 24 bytes, not 16"),
    (_copy_frame(_copy_body(name=b"\xff\xfe")), "host name is not UTF-8"),
    (_copy_frame(_copy_body(address=b"10.0.0.\xc3")), "address is not UTF-8"),
])
def test_malformed_copy_pages(raw: bytes, match: str) -> None:
    with pytest.raises(FabricProtocolError, match=match):
        split(raw)


def test_directory_round_trip() -> None:
    codes = bytes([0, 1, 255, 2]) * 1000
    frame = b"".join(bytes(b) for b in wire.encode_directory(7, VM, b'{"npages": 4000}', codes))
    header = wire.parse_header(frame[:wire.HEADER_SIZE])
    assert header.type is wire.MessageType.DIRECTORY and header.count == 0
    head, got = wire.decode_directory(memoryview(frame[wire.HEADER_SIZE:]))
    assert head == b'{"npages": 4000}' and got == codes
    assert wire.REPLY_TO[wire.MessageType.GET_DIRECTORY] is wire.MessageType.DIRECTORY


def test_directory_refuses_bad_frames() -> None:
    with pytest.raises(ValueError, match="one line"):
        wire.encode_directory(1, VM, b"a\nb", b"")
    with pytest.raises(FabricProtocolError, match="header line"):
        wire.decode_directory(memoryview(b"no newline"))
    with pytest.raises(FabricProtocolError):   # GET_DIRECTORY carries nothing
        wire.parse_header(wire.encode_header(wire.MessageType.GET_DIRECTORY, 1, VM, 0, 8))
