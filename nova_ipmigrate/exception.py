"""Exceptions of nova-ipmigrate that cross the RPC boundary.

Modelled on Nova's ``NovaException``: each class has a ``msg_fmt`` filled from
the keyword arguments of the constructor (or an explicit message) and an
HTTP-like ``code``. This module is in :data:`nova_ipmigrate.rpc.ALLOWED_EXMODS`,
so an exception an agent raises in an RPC method comes back to the caller as
(a subclass of) the same class, with the same ``kwargs``; anything else comes
back as ``oslo_messaging.RemoteError``.

The agent's control operations refuse requests with ``ControlError(message,
errno)``; :func:`from_errno` turns such an errno into one of these classes.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

LOG = logging.getLogger(__name__)


class IPMigrateException(Exception):
    """Base nova-ipmigrate exception.

    Subclasses define ``msg_fmt``, printf'd with the constructor's keyword
    arguments. Every keyword argument must be JSON-serializable: they travel
    over RPC and rebuild the exception on the caller's side.
    """

    msg_fmt = "An unknown exception occurred."
    code = 500

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.kwargs.setdefault("code", self.code)
        if not message:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                LOG.exception("exception in string format operation: %r", kwargs)
                message = self.msg_fmt
        self.message = str(message)
        super().__init__(self.message)

    @property
    def errno(self) -> int | None:
        """The errno of the refusal this came from (see :func:`from_errno`), if any."""
        value = self.kwargs.get("errno")
        return value if isinstance(value, int) else None

    def format_message(self) -> str:
        # args[0] is the message alone; str() of an exception re-raised by
        # oslo.messaging also carries the remote traceback.
        return str(self.args[0])


class Invalid(IPMigrateException):
    msg_fmt = "Invalid request: %(reason)s"
    code = 400


class NotFound(IPMigrateException):
    msg_fmt = "Resource could not be found: %(reason)s"
    code = 404


class Conflict(IPMigrateException):
    msg_fmt = "Conflicting request: %(reason)s"
    code = 409


class Unavailable(IPMigrateException):
    msg_fmt = "Service unavailable: %(reason)s"
    code = 503


class InsufficientCapacity(IPMigrateException):
    msg_fmt = "Insufficient capacity: %(reason)s"
    code = 507


#: errno of a refusal -> the exception class it is raised as
ERRNO_CLASSES: dict[int, type[IPMigrateException]] = {
    errno.EINVAL: Invalid,
    errno.E2BIG: Invalid,
    errno.EISDIR: Invalid,
    errno.ENOTDIR: Invalid,
    errno.EOPNOTSUPP: Invalid,
    errno.ENOSYS: Invalid,
    errno.ENOENT: NotFound,
    errno.ENODEV: NotFound,
    errno.EBUSY: Conflict,
    errno.EEXIST: Conflict,
    errno.ENOTEMPTY: Conflict,
    errno.EAGAIN: Conflict,
    errno.ENOSPC: InsufficientCapacity,
    errno.ENOMEM: InsufficientCapacity,
    errno.EFBIG: InsufficientCapacity,
    errno.EHOSTUNREACH: Unavailable,
    errno.ECONNREFUSED: Unavailable,
    errno.ECONNRESET: Unavailable,
    errno.ETIMEDOUT: Unavailable,
    errno.EIO: Unavailable,
    errno.ESTALE: Unavailable,
}


def from_errno(message: str, errno_: int | None) -> IPMigrateException:
    """The exception for a refusal ``message`` with ``errno_`` (not raised).

    Unknown errnos give the base class (code 500). The errno is kept in
    ``kwargs["errno"]`` (and the :attr:`IPMigrateException.errno` property).
    """
    cls = ERRNO_CLASSES.get(errno_, IPMigrateException) if errno_ is not None \
        else IPMigrateException
    return cls(message, reason=message, errno=errno_)
