"""The fabric wire format, declared once and shared by both ends.

Every message is a frame: a fixed :data:`HEADER` followed by ``length`` payload
bytes. Integers are little-endian (no byte swapping on the hosts we run on).

Header (40 bytes): magic ``IPMF`` (u32), version (u8), type (u8), flags (u16,
none defined: must be 0), request id (u64, echoed by the reply), VM (16-byte
UUID, all zero where no VM is concerned), count (u32), payload length (u32).

Payloads, by type (``n`` = count):

* HELLO: nonce (32 bytes) + the client's host name (UTF-8).
* CHALLENGE: nonce (32) + the server's MAC (32) + the server's host name.
* AUTH: the client's MAC (32). AUTH_OK, PING, PONG: empty.
* GET_PAGES, DROP_PAGES: ``n`` page numbers (u64 each).
* PAGES (reply to GET_PAGES), PUT_PAGES: ``n`` page numbers, a zero bitmap of
  ``ceil(n / 8)`` bytes (bit ``i % 8`` of byte ``i // 8`` set: page ``i`` is all
  zeros and its data is elided; padding bits 0), then the data of the non-zero
  pages, ``PAGE_SIZE`` bytes each, back to back in list order.
* ACK: empty; ``n`` is the number of pages the request applied (put, dropped,
  committed); the only count that may exceed :data:`MAX_PAGES` (after DROP_VM).
* COPY_PAGES (partial migration, main host to the sub-host holding the pages):
  staging key (16-byte UUID) + destination port (u16) + destination host name
  length (u8) + name (UTF-8, 1 to 255 bytes) + destination address length (u8)
  + address (UTF-8, 1 to 255 bytes) + ``n`` page numbers (u64 each). The pages
  of the header's VM that the receiver holds are sent to that host as PUT_PAGES
  for the VM ``staging key``.
* COPIED (reply to COPY_PAGES): ``n`` is the number of pages copied; payload:
  the listed page numbers not held (u64 each).
* COMMIT_PAGES: staging key (16) + ``n`` page numbers: move those pages from
  the staging key to the header's VM, all or nothing (ACK, or ERROR NOT_HELD).
* DROP_VM: empty; forget every page held for the header's VM (or staging key).
* GET_DIRECTORY (main-host move, new main host to the old one): empty. The
  reply DIRECTORY (count 0) carries the VM's page directory as the old main
  host froze it: a UTF-8 JSON line (``{"npages": N, "holders": {"<code>":
  {"name", "address", "port"}}}``) ending in ``\n``, then one code byte per
  page (0: zero, 255: held by the old main host, else that holder).
* ERROR: code (u32, :class:`~nova_ipmigrate.fabric.errors.ErrorCode`), ``n`` page
  numbers the error is about (may be 0), a UTF-8 message.

Limits (:data:`MAX_PAGES`, :data:`MAX_PAYLOAD`, :data:`MAX_HANDSHAKE_PAYLOAD`)
are checked on the header, before any payload is read. Nothing here does I/O:
encoders return the buffers of a frame for vectored sends, decoders read a
payload that the connection has received whole.
"""

from __future__ import annotations

import enum
import functools
import itertools
import operator
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from nova_ipmigrate.fabric.errors import ErrorCode, FabricProtocolError
from nova_ipmigrate.memfs.protocol import PAGE_SIZE

#: Anything a frame is sent from; page data is passed as slices, never copied.
Buffer = bytes | bytearray | memoryview

MAGIC = 0x464D5049  # b"IPMF" read as little-endian u32
VERSION = 1
HEADER = struct.Struct("<IBBHQ16sII")
HEADER_SIZE = HEADER.size
PAGE_NUMBER = struct.Struct("<Q")
ERROR_BODY = struct.Struct("<I")

#: Most pages one message may carry or name.
MAX_PAGES = 4096
#: Largest payload of any message (MAX_PAGES pages with their list and bitmap fit).
MAX_PAYLOAD = 32 * 2**20
#: Largest payload accepted before the peer is authenticated: an anonymous peer
#: must not make us allocate megabytes.
MAX_HANDSHAKE_PAYLOAD = 1024
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_HOST_NAME = 255
MAX_ERROR_TEXT = 1024

ZERO_PAGE = bytes(PAGE_SIZE)
NO_VM = uuid.UUID(int=0)


class MessageType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    AUTH_OK = 4
    GET_PAGES = 10
    PAGES = 11
    PUT_PAGES = 12
    DROP_PAGES = 13
    ACK = 14
    ERROR = 15
    COPY_PAGES = 16
    COPIED = 17
    COMMIT_PAGES = 18
    DROP_VM = 19
    PING = 20
    PONG = 21
    GET_DIRECTORY = 22
    DIRECTORY = 23


#: Messages a peer may send before it is authenticated.
HANDSHAKE_TYPES = frozenset({MessageType.HELLO, MessageType.CHALLENGE, MessageType.AUTH,
                             MessageType.AUTH_OK, MessageType.ERROR})
#: Requests an authenticated client may send, and the reply each gets (or ERROR).
REPLY_TO = {
    MessageType.GET_PAGES: MessageType.PAGES,
    MessageType.PUT_PAGES: MessageType.ACK,
    MessageType.DROP_PAGES: MessageType.ACK,
    MessageType.COPY_PAGES: MessageType.COPIED,
    MessageType.COMMIT_PAGES: MessageType.ACK,
    MessageType.DROP_VM: MessageType.ACK,
    MessageType.PING: MessageType.PONG,
    MessageType.GET_DIRECTORY: MessageType.DIRECTORY,
}
#: Messages carrying page data (list + zero bitmap + data).
DATA_TYPES = frozenset({MessageType.PAGES, MessageType.PUT_PAGES})
#: Messages carrying a page-number list only.
LIST_TYPES = frozenset({MessageType.GET_PAGES, MessageType.DROP_PAGES})
#: Messages with neither count nor payload.
EMPTY_TYPES = frozenset({MessageType.AUTH_OK, MessageType.PING, MessageType.PONG,
                         MessageType.DROP_VM, MessageType.GET_DIRECTORY})

KEY_SIZE = 16  # a staging key is a UUID
PORT = struct.Struct("<H")
#: The fixed part of a COPY_PAGES payload: key, port, and the two length bytes.
COPY_FIXED = KEY_SIZE + PORT.size + 2
#: Longest destination address of a COPY_PAGES.
MAX_ADDRESS = 255


# Built for every frame: slots and no frozen __setattr__ make them cheap to create.
@dataclass(slots=True)
class Header:
    type: MessageType
    request_id: int
    vm: uuid.UUID
    count: int
    length: int


@dataclass(slots=True)
class CopyRequest:
    """A COPY_PAGES: send ``pages`` to host ``name`` at ``address``:``port`` under ``key``."""

    key: uuid.UUID
    name: str
    address: str
    port: int
    pages: list[int]


@dataclass(slots=True)
class Frame:
    """A received frame whose header and payload passed validation."""

    header: Header
    #: Valid until the connection receives its next frame.
    payload: memoryview


_TYPES = {type_.value: type_ for type_ in MessageType}


@functools.lru_cache(maxsize=1024)
def _vm(raw: bytes) -> uuid.UUID:
    # A connection carries few VMs; building a UUID costs more than the lookup.
    return uuid.UUID(bytes=raw)


def bitmap_size(count: int) -> int:
    return (count + 7) // 8


# -- header -------------------------------------------------------------------------------


def parse_header(raw: Buffer, authenticated: bool = True) -> Header:
    """Decode and check a header; every length check that needs no payload is done here."""
    if len(raw) != HEADER_SIZE:
        raise FabricProtocolError(f"header of {len(raw)} bytes, not {HEADER_SIZE}")
    magic, version, mtype, flags, request_id, vm, count, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FabricProtocolError(f"bad magic {magic:#010x}")
    if version != VERSION:
        raise FabricProtocolError(f"unsupported protocol version {version}")
    type_ = _TYPES.get(mtype)
    if type_ is None:
        raise FabricProtocolError(f"unknown message type {mtype}")
    if flags:
        raise FabricProtocolError(f"unknown flags {flags:#x} in {type_.name}")
    if not authenticated and type_ not in HANDSHAKE_TYPES:
        raise FabricProtocolError(f"{type_.name} before authentication")
    limit = MAX_PAYLOAD if authenticated else MAX_HANDSHAKE_PAYLOAD
    if length > limit:
        raise FabricProtocolError(f"{type_.name} payload of {length} bytes exceeds {limit}")
    # An ACK's count sizes nothing (a DROP_VM may drop more than MAX_PAGES pages).
    if count > MAX_PAGES and type_ is not MessageType.ACK:
        raise FabricProtocolError(f"{type_.name} names {count} pages, more than {MAX_PAGES}")
    _check_length(type_, count, length)
    return Header(type_, request_id, _vm(vm), count, length)


def _check_length(type_: MessageType, count: int, length: int) -> None:
    if type_ in DATA_TYPES:
        fixed = count * PAGE_NUMBER.size + bitmap_size(count)
        ok = fixed <= length <= fixed + count * PAGE_SIZE and (length - fixed) % PAGE_SIZE == 0
    elif type_ in LIST_TYPES:
        ok = length == count * PAGE_NUMBER.size
    elif type_ in EMPTY_TYPES:
        ok = count == 0 and length == 0
    elif type_ is MessageType.ACK:
        ok = length == 0
    elif type_ is MessageType.COPY_PAGES:
        # Both strings at least 1 byte, at most 255: checked exactly with the payload.
        fixed = COPY_FIXED + count * PAGE_NUMBER.size
        ok = fixed + 2 <= length <= fixed + MAX_HOST_NAME + MAX_ADDRESS
    elif type_ is MessageType.COPIED:
        # Copied and missing pages together are at most the pages of one request.
        ok = length % PAGE_NUMBER.size == 0 and count + length // PAGE_NUMBER.size <= MAX_PAGES
    elif type_ is MessageType.COMMIT_PAGES:
        ok = length == KEY_SIZE + count * PAGE_NUMBER.size
    elif type_ is MessageType.ERROR:
        fixed = ERROR_BODY.size + count * PAGE_NUMBER.size
        ok = fixed <= length <= fixed + MAX_ERROR_TEXT
    elif type_ is MessageType.DIRECTORY:
        ok = count == 0 and 0 < length <= MAX_PAYLOAD
    elif type_ is MessageType.HELLO:
        ok = count == 0 and NONCE_SIZE < length <= NONCE_SIZE + MAX_HOST_NAME
    elif type_ is MessageType.CHALLENGE:
        fixed = NONCE_SIZE + MAC_SIZE
        ok = count == 0 and fixed < length <= fixed + MAX_HOST_NAME
    else:  # AUTH
        ok = count == 0 and length == MAC_SIZE
    if not ok:
        raise FabricProtocolError(
            f"{type_.name} with count {count} cannot have a {length}-byte payload")


def check_payload(header: Header, payload: memoryview) -> None:
    """Checks that need the payload; after this, decoding a frame cannot fail."""
    if header.type in DATA_TYPES:
        _zero_mask(header.count, payload, header.length)
    elif header.type in (MessageType.HELLO, MessageType.CHALLENGE):
        _host_name(payload[NONCE_SIZE + (MAC_SIZE if header.type is MessageType.CHALLENGE
                                         else 0):])
    elif header.type is MessageType.ERROR:
        _error_text(payload[ERROR_BODY.size + header.count * PAGE_NUMBER.size:])
    elif header.type is MessageType.COPY_PAGES:
        _copy_destination(header, payload)


def encode_header(type_: MessageType, request_id: int, vm: uuid.UUID, count: int,
                  length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, type_, 0, request_id, vm.bytes, count, length)


def frame(type_: MessageType, request_id: int, vm: uuid.UUID, count: int,
          body: Sequence[Buffer]) -> list[Buffer]:
    """The buffers of a frame: its header followed by ``body``, nothing copied."""
    length = sum(map(len, body))
    return [encode_header(type_, request_id, vm, count, length), *body]


def encode_empty(type_: MessageType, request_id: int = 0, vm: uuid.UUID = NO_VM,
                 count: int = 0) -> list[Buffer]:
    """AUTH_OK, PING, PONG, DROP_VM, or ACK (``count``: the pages applied)."""
    return [encode_header(type_, request_id, vm, count, 0)]


# -- page lists and page data -------------------------------------------------------------


def _pack_pages(pages: Sequence[int]) -> bytes:
    try:
        return struct.pack(f"<{len(pages)}Q", *pages)
    except struct.error as exc:
        raise ValueError(f"page numbers must be u64: {exc}") from None


def _check_count(count: int) -> None:
    if count > MAX_PAGES:
        raise ValueError(f"{count} pages in one message, more than {MAX_PAGES}")


def encode_page_list(type_: MessageType, request_id: int, vm: uuid.UUID,
                     pages: Sequence[int]) -> list[Buffer]:
    """GET_PAGES or DROP_PAGES."""
    _check_count(len(pages))
    return frame(type_, request_id, vm, len(pages), [_pack_pages(pages)])


def encode_pages(type_: MessageType, request_id: int, vm: uuid.UUID, pages: Sequence[int],
                 data: Sequence[Buffer]) -> list[Buffer]:
    """PAGES or PUT_PAGES: zero pages are elided, the others are sent as given."""
    count = len(pages)
    _check_count(count)
    if len(data) != count:
        raise ValueError(f"{count} page numbers but {len(data)} pages of data")
    # map() keeps the per-page work in C: this runs for every page that moves.
    if count and set(map(len, data)) != {PAGE_SIZE}:
        bad = next(i for i, page in enumerate(data) if len(page) != PAGE_SIZE)
        raise ValueError(f"page {pages[bad]} has {len(data[bad])} bytes, not {PAGE_SIZE}")
    # Zero test: bytes.startswith takes any buffer and compares with memcmp, stopping
    # at the first non-zero byte; `==` on a memoryview compares item by item.
    zero = list(map(ZERO_PAGE.startswith, data))
    body: list[Buffer] = [_pack_pages(pages)]
    if any(zero):
        mask = sum(1 << index for index in itertools.compress(range(count), zero))
        body.append(mask.to_bytes(bitmap_size(count), "little"))
        body.extend(itertools.compress(data, map(operator.not_, zero)))
    else:
        body.append(bytes(bitmap_size(count)))
        body.extend(data)
    return frame(type_, request_id, vm, count, body)


def decode_page_list(header: Header, payload: memoryview) -> list[int]:
    return list(struct.unpack_from(f"<{header.count}Q", payload))


def _zero_mask(count: int, payload: memoryview, length: int) -> int:
    """The zero bitmap as an int (bit i: page i elided), checked against the length."""
    offset = count * PAGE_NUMBER.size
    mask = int.from_bytes(payload[offset:offset + bitmap_size(count)], "little")
    if mask >> count:
        raise FabricProtocolError("zero bitmap has bits set past the last page")
    data_pages = count - mask.bit_count()
    expected = offset + bitmap_size(count) + data_pages * PAGE_SIZE
    if length != expected:
        raise FabricProtocolError(
            f"{count} pages with {data_pages} non-zero need {expected} payload bytes, "
            f"got {length}")
    return mask


def decode_pages(header: Header, payload: memoryview) -> tuple[list[int], list[Buffer]]:
    """Page numbers and their contents: slices of ``payload``, ZERO_PAGE where elided."""
    count = header.count
    pages = decode_page_list(header, payload)
    mask = _zero_mask(count, payload, header.length)
    offset = count * PAGE_NUMBER.size + bitmap_size(count)
    data: list[Buffer]
    if not mask:
        data = [payload[start:start + PAGE_SIZE]
                for start in range(offset, offset + count * PAGE_SIZE, PAGE_SIZE)]
        return pages, data
    data = []
    for index in range(count):
        if mask >> index & 1:
            data.append(ZERO_PAGE)
        else:
            data.append(payload[offset:offset + PAGE_SIZE])
            offset += PAGE_SIZE
    return pages, data


# -- partial migration: COPY_PAGES, COPIED, COMMIT_PAGES -----------------------------------


def encode_copy_pages(request_id: int, vm: uuid.UUID, request: CopyRequest) -> list[Buffer]:
    """COPY_PAGES of ``vm``'s ``request.pages`` to ``request``'s destination."""
    _check_count(len(request.pages))
    name = encode_host_name(request.name)
    address = request.address.encode("utf-8")
    if not 0 < len(address) <= MAX_ADDRESS:
        raise ValueError(f"destination address must be 1 to {MAX_ADDRESS} bytes of UTF-8: "
                         f"{request.address!r}")
    if not 0 <= request.port <= 0xFFFF:
        raise ValueError(f"destination port must be u16: {request.port}")
    head = b"".join([request.key.bytes, PORT.pack(request.port), bytes([len(name)]), name,
                     bytes([len(address)]), address])
    return frame(MessageType.COPY_PAGES, request_id, vm, len(request.pages),
                 [head, _pack_pages(request.pages)])


def _copy_destination(header: Header, payload: memoryview) -> tuple[str, str, int]:
    """Destination name, address and the offset of the page list, checked."""
    name_end = COPY_FIXED - 1 + payload[KEY_SIZE + PORT.size]
    if not COPY_FIXED - 1 < name_end < header.length:
        raise FabricProtocolError("COPY_PAGES destination name is empty or overruns")
    name = _host_name(payload[COPY_FIXED - 1:name_end])
    address_end = name_end + 1 + payload[name_end]
    if address_end == name_end + 1:
        raise FabricProtocolError("COPY_PAGES destination address is empty")
    if header.length - address_end != header.count * PAGE_NUMBER.size:
        raise FabricProtocolError(
            f"COPY_PAGES of {header.count} pages: the page list takes "
            f"{header.length - address_end} bytes, not {header.count * PAGE_NUMBER.size}")
    try:
        address = bytes(payload[name_end + 1:address_end]).decode("utf-8")
    except UnicodeDecodeError:
        raise FabricProtocolError("COPY_PAGES destination address is not UTF-8") from None
    return name, address, address_end


def decode_copy_pages(header: Header, payload: memoryview) -> CopyRequest:
    name, address, offset = _copy_destination(header, payload)
    (port,) = PORT.unpack_from(payload, KEY_SIZE)
    pages = list(struct.unpack_from(f"<{header.count}Q", payload, offset))
    return CopyRequest(_vm(bytes(payload[:KEY_SIZE])), name, address, port, pages)


def encode_copied(request_id: int, vm: uuid.UUID, copied: int,
                  missing: Sequence[int]) -> list[Buffer]:
    """COPIED: ``copied`` pages sent, ``missing`` the listed pages not held."""
    if copied < 0:
        raise ValueError(f"{copied} pages copied")
    _check_count(copied + len(missing))
    return frame(MessageType.COPIED, request_id, vm, copied, [_pack_pages(missing)])


def decode_copied(header: Header, payload: memoryview) -> tuple[int, list[int]]:
    """Pages copied, and the page numbers that were not held."""
    missing = header.length // PAGE_NUMBER.size
    return header.count, list(struct.unpack_from(f"<{missing}Q", payload))


def encode_commit_pages(request_id: int, vm: uuid.UUID, key: uuid.UUID,
                        pages: Sequence[int]) -> list[Buffer]:
    """COMMIT_PAGES: ``pages`` move from the staging ``key`` to ``vm``."""
    _check_count(len(pages))
    return frame(MessageType.COMMIT_PAGES, request_id, vm, len(pages),
                 [key.bytes, _pack_pages(pages)])


def decode_commit_pages(header: Header, payload: memoryview) -> tuple[uuid.UUID, list[int]]:
    """Staging key and page numbers of a COMMIT_PAGES."""
    return (_vm(bytes(payload[:KEY_SIZE])),
            list(struct.unpack_from(f"<{header.count}Q", payload, KEY_SIZE)))


# -- ERROR --------------------------------------------------------------------------------


def encode_error(request_id: int, vm: uuid.UUID, code: ErrorCode, message: str,
                 pages: Sequence[int] = ()) -> list[Buffer]:
    pages = list(pages)[:MAX_PAGES]
    text = message.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
    return frame(MessageType.ERROR, request_id, vm, len(pages),
                 [ERROR_BODY.pack(code), _pack_pages(pages), text])


def _error_text(raw: memoryview) -> str:
    return bytes(raw).decode("utf-8", "replace")


def decode_error(header: Header, payload: memoryview) -> tuple[int, list[int], str]:
    """Code, pages concerned and message of an ERROR."""
    (code,) = ERROR_BODY.unpack_from(payload)
    offset = ERROR_BODY.size + header.count * PAGE_NUMBER.size
    pages = list(struct.unpack_from(f"<{header.count}Q", payload, ERROR_BODY.size))
    return code, pages, _error_text(payload[offset:])


# -- handshake ----------------------------------------------------------------------------


def encode_host_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= MAX_HOST_NAME:
        raise ValueError(f"host name must be 1 to {MAX_HOST_NAME} bytes of UTF-8: {name!r}")
    return raw


def _host_name(raw: memoryview) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise FabricProtocolError("host name is not UTF-8") from None


def encode_hello(nonce: bytes, host_name: str) -> list[Buffer]:
    return frame(MessageType.HELLO, 0, NO_VM, 0, [nonce, encode_host_name(host_name)])


def decode_hello(payload: memoryview) -> tuple[bytes, str]:
    """Client nonce and host name."""
    return bytes(payload[:NONCE_SIZE]), _host_name(payload[NONCE_SIZE:])


def encode_challenge(nonce: bytes, mac: bytes, host_name: str) -> list[Buffer]:
    return frame(MessageType.CHALLENGE, 0, NO_VM, 0, [nonce, mac, encode_host_name(host_name)])


def encode_auth(mac: bytes) -> list[Buffer]:
    return frame(MessageType.AUTH, 0, NO_VM, 0, [mac])


def decode_challenge(payload: memoryview) -> tuple[bytes, bytes, str]:
    """Server nonce, server MAC and host name."""
    mac_end = NONCE_SIZE + MAC_SIZE
    return (bytes(payload[:NONCE_SIZE]), bytes(payload[NONCE_SIZE:mac_end]),
            _host_name(payload[mac_end:]))


def encode_directory(request_id: int, vm: uuid.UUID, header: bytes,
                     codes: Buffer) -> list[Buffer]:
    """A DIRECTORY reply: the JSON ``header`` line, then one code byte per page."""
    if b"\n" in header:
        raise ValueError("a directory header is one line")
    length = len(header) + 1 + len(codes)
    if length > MAX_PAYLOAD:
        raise FabricProtocolError(f"a directory of {len(codes)} pages does not fit a frame")
    return [encode_header(MessageType.DIRECTORY, request_id, vm, 0, length), header, b"\n",
            codes]


def decode_directory(payload: memoryview) -> tuple[bytes, bytes]:
    """(JSON header line, code bytes) of a DIRECTORY payload."""
    raw = bytes(payload)
    end = raw.find(b"\n")
    if end < 0:
        raise FabricProtocolError("DIRECTORY without its header line")
    return raw[:end], raw[end + 1:]
