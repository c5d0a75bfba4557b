"""RPC endpoint methods whose arguments are checked before they run.

Shared by the agent's and the engine's RPC managers: a call with an unknown or
missing argument, or one of the wrong type, raises
:class:`~nova_ipmigrate.exception.Invalid` (which the caller gets back as that
class) and the method does not run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import oslo_messaging as messaging

from nova_ipmigrate import exception

F = TypeVar("F", bound=Callable[..., Any])
#: an argument that is a number (bool excluded)
NUMBER = (int, float)


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object",
             list: "a list", bool: "a boolean"}
    if set(types) == {int, float}:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(method: str, name: str, value: Any, types: tuple[type, ...],
           optional: bool) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise exception.Invalid(
            f"{method}: argument '{name}' must be {_type_name(types)}"
            f"{' or null' if optional else ''}, not {type(value).__name__}",
            reason=f"bad argument {name!r}", method=method, argument=name)


def remotable(**types: type | tuple[type, ...]) -> Callable[[F], F]:
    """An RPC method whose keyword arguments are checked against ``types``.

    Unknown or missing arguments and arguments of the wrong type raise
    :class:`exception.Invalid` before the method runs; an argument whose
    default is ``None`` may be ``None``. The method's own
    :class:`exception.IPMigrateException` are expected ones: the server logs
    them at debug level only.
    """
    def deco(fn: F) -> F:
        sig = inspect.signature(fn)
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(self: Any, context: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(self, context, **kwargs)
            except TypeError as exc:
                raise exception.Invalid(f"{name}: {exc}", reason=str(exc),
                                        method=name) from None
            for arg, value in bound.arguments.items():
                if arg in types:
                    spec = types[arg]
                    allowed = spec if isinstance(spec, tuple) else (spec,)
                    _check(name, arg, value, allowed, sig.parameters[arg].default is None)
            return fn(self, context, **kwargs)

        expected = messaging.expected_exceptions(exception.IPMigrateException)(wrapper)
        return functools.wraps(fn)(expected)  # type: ignore[return-value]

    return deco
