"""nova_ipmigrate.exception: messages, codes, errno mapping, the trip over RPC."""

from __future__ import annotations

import errno
import sys

import oslo_messaging as messaging
import pytest
from oslo_messaging._drivers import common as driver_common

from nova_ipmigrate import exception, rpc


def test_message_from_msg_fmt_and_kwargs() -> None:
    exc = exception.NotFound(reason="no RAM file 'x'")
    assert str(exc) == "Resource could not be found: no RAM file 'x'"
    assert exc.kwargs == {"reason": "no RAM file 'x'", "code": 404}
    assert exc.format_message() == str(exc) and exc.errno is None


def test_explicit_message_and_bad_kwargs() -> None:
    assert str(exception.Conflict("busy", reason="r")) == "busy"
    # a msg_fmt that the kwargs do not fill: the bare format, no exception
    assert str(exception.Invalid(wrong="x")) == "Invalid request: %(reason)s"
    assert str(exception.IPMigrateException()) == "An unknown exception occurred."


@pytest.mark.parametrize(("cls", "code"), [
    (exception.IPMigrateException, 500), (exception.Invalid, 400),
    (exception.NotFound, 404), (exception.Conflict, 409), (exception.Unavailable, 503),
    (exception.InsufficientCapacity, 507),
])
def test_codes(cls: type[exception.IPMigrateException], code: int) -> None:
    assert cls.code == code and cls(reason="r").kwargs["code"] == code
    assert issubclass(cls, exception.IPMigrateException)


@pytest.mark.parametrize(("errno_", "cls"), [
    (errno.EINVAL, exception.Invalid), (errno.EOPNOTSUPP, exception.Invalid),
    (errno.E2BIG, exception.Invalid), (errno.ENOENT, exception.NotFound),
    (errno.EBUSY, exception.Conflict), (errno.EEXIST, exception.Conflict),
    (errno.ENOSPC, exception.InsufficientCapacity),
    (errno.ENOMEM, exception.InsufficientCapacity),
    (errno.EHOSTUNREACH, exception.Unavailable), (errno.EIO, exception.Unavailable),
    (errno.ECONNREFUSED, exception.Unavailable),
    (errno.EPERM, exception.IPMigrateException), (None, exception.IPMigrateException),
])
def test_from_errno(errno_: int | None, cls: type[exception.IPMigrateException]) -> None:
    exc = exception.from_errno("it failed", errno_)
    assert type(exc) is cls and str(exc) == "it failed"
    assert exc.errno == errno_ and exc.kwargs["reason"] == "it failed"


def _over_the_wire(exc: Exception, allowed: list[str]) -> Exception:
    try:
        raise exc
    except Exception:
        data = driver_common.serialize_remote_exception(sys.exc_info())
    result: Exception = driver_common.deserialize_remote_exception(data, allowed)
    return result


def test_the_same_class_comes_back_over_rpc() -> None:
    back = _over_the_wire(exception.from_errno("holds no part", errno.EBUSY),
                          rpc.get_allowed_exmods())
    assert isinstance(back, exception.Conflict)
    assert back.kwargs == {"reason": "holds no part", "errno": errno.EBUSY, "code": 409}
    assert back.format_message() == "holds no part" and back.errno == errno.EBUSY
    assert "holds no part" in str(back)  # str() also has the remote traceback


def test_other_modules_come_back_as_remote_errors() -> None:
    assert rpc.ALLOWED_EXMODS == ["nova_ipmigrate.exception"]
    back = _over_the_wire(exception.Invalid(reason="x"), [])
    assert isinstance(back, messaging.RemoteError) and back.exc_type == "Invalid"


def test_extra_exmods() -> None:
    rpc.add_extra_exmods("other.exceptions")
    try:
        assert rpc.get_allowed_exmods() == ["nova_ipmigrate.exception", "other.exceptions"]
    finally:
        rpc.clear_extra_exmods()
    assert rpc.get_allowed_exmods() == ["nova_ipmigrate.exception"]
