"""Exceptions of the fabric, one per way a page transfer can fail.

Both ends share them: a :class:`~nova_ipmigrate.fabric.service.PageService`
raises a :class:`FabricRemoteError` subclass to refuse a request, the server
sends it as an ERROR message, and the client raises the same class again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ErrorCode(enum.IntEnum):
    """Codes of ERROR messages (the ``code`` field of ``wire.ERROR_BODY``)."""

    NOT_HELD = 1
    STORE_FULL = 2
    BAD_REQUEST = 3
    INTERNAL = 4
    AUTH_FAILED = 5
    PROTOCOL = 6


class FabricError(Exception):
    """Base class of every fabric failure."""


class FabricConfigError(FabricError):
    """The fabric is misconfigured on this host (key file, certificates)."""


class FabricProtocolError(FabricError):
    """The peer broke the wire protocol; the connection is closed."""

    code = ErrorCode.PROTOCOL


class FabricAuthError(FabricError):
    """The peer could not prove that it holds the shared key (or its certificate)."""

    code = ErrorCode.AUTH_FAILED


class FabricConnectionError(FabricError):
    """The connection broke or could not be opened."""


class FabricTimeoutError(FabricConnectionError):
    """The peer did not answer within the request timeout; the connection is closed."""


class FabricRemoteError(FabricError):
    """The peer refused a request with an ERROR message; the connection stays usable.

    ``pages`` are the pages the refusal is about (e.g. the ones not held), if any.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, pages: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.pages = list(pages)


class PagesNotHeldError(FabricRemoteError):
    """Some requested pages are not held by the peer; no page was returned."""

    code = ErrorCode.NOT_HELD


class StoreFullError(FabricRemoteError):
    """The peer's page store cannot take the pages; none of them was stored."""

    code = ErrorCode.STORE_FULL


class RemoteInternalError(FabricRemoteError):
    """The peer failed while serving the request; nothing was applied."""

    code = ErrorCode.INTERNAL


class RemoteBadRequestError(FabricRemoteError):
    """The peer rejected a well-formed request it cannot serve (e.g. unknown VM)."""

    code = ErrorCode.BAD_REQUEST


_BY_CODE: dict[int, type[FabricRemoteError]] = {
    cls.code: cls
    for cls in (PagesNotHeldError, StoreFullError, RemoteInternalError, RemoteBadRequestError)
}


def remote_error(code: int, message: str, pages: Sequence[int] = ()) -> FabricError:
    """The exception for an ERROR message received from a peer."""
    if code == ErrorCode.AUTH_FAILED:
        return FabricAuthError(f"peer refused authentication: {message}")
    if code == ErrorCode.PROTOCOL:
        return FabricProtocolError(f"peer reported a protocol error: {message}")
    return _BY_CODE.get(code, RemoteInternalError)(message, pages)
