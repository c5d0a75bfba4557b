"""oslo.messaging set-up of nova-ipmigrate, in the manner of ``nova.rpc``.

:func:`init` creates the process-wide RPC transport (``[DEFAULT]
transport_url``), the notification transport (``[oslo_messaging_notifications]``,
falling back to the RPC one) and the notifier; :func:`cleanup` releases them.
Clients and servers are made with :func:`get_client` / :func:`get_server`,
which add the request-context serializer; servers use the threading executor
(there is no eventlet in nova-ipmigrate).

Exceptions of the modules in :data:`ALLOWED_EXMODS` are re-raised as the same
class on the calling side; others come back as ``oslo_messaging.RemoteError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_messaging import opts as messaging_opts
from oslo_messaging.rpc import dispatcher
from oslo_serialization import jsonutils

from nova_ipmigrate import exception

try:
    from oslo_messaging._metrics import client as _metrics_client
except ImportError:  # an oslo.messaging without metrics
    _metrics_client = None
try:
    from oslo_messaging._tracing import client as _tracing_client
except ImportError:  # an oslo.messaging without tracing
    _tracing_client = None

__all__ = [
    "ALLOWED_EXMODS",
    "TRANSPORT_ALIASES",
    "RequestContextSerializer",
    "cleanup",
    "get_allowed_exmods",
    "get_client",
    "get_notification_transport",
    "get_notifier",
    "get_rpc_transport",
    "get_server",
    "get_transport",
    "init",
    "initialized",
    "register_opts",
]

TRANSPORT: messaging.Transport | None = None
NOTIFICATION_TRANSPORT: messaging.Transport | None = None
NOTIFIER: messaging.Notifier | None = None

ALLOWED_EXMODS = [exception.__name__]
EXTRA_EXMODS: list[str] = []
#: no legacy driver names to translate
TRANSPORT_ALIASES: dict[str, str] = {}


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register oslo.messaging's ``[DEFAULT]`` options (``transport_url``,
    ``rpc_response_timeout``, ...) now rather than on the first transport, so
    that a process can tell whether a transport is configured."""
    for group, opts in messaging_opts.list_opts():
        if group is None:
            conf.register_opts(opts)
    # oslo.messaging registers its metrics and tracing options on the global CONF
    # only, but reads them from the transport's conf on every call.
    if conf is not cfg.CONF:
        for group, module in (("oslo_messaging_metrics", _metrics_client),
                              ("oslo_messaging_tracing", _tracing_client)):
            opts = getattr(module, group, None)
            if opts is not None:
                conf.register_opts(opts, group=group)


def get_allowed_exmods() -> list[str]:
    return ALLOWED_EXMODS + EXTRA_EXMODS


def add_extra_exmods(*modules: str) -> None:
    EXTRA_EXMODS.extend(modules)


def clear_extra_exmods() -> None:
    del EXTRA_EXMODS[:]


def transport_configured(conf: cfg.ConfigOpts) -> bool:
    """Whether ``[DEFAULT] transport_url`` is set: in a file, the environment, the
    command line or by an override; oslo.messaging's own default (``rabbit://``,
    guest on localhost) does not count."""
    register_opts(conf)
    if not conf.transport_url:
        return False
    info = conf.get_location("transport_url")
    return info is None or info.location not in (cfg.Locations.opt_default,
                                                 cfg.Locations.set_default)


def get_rpc_transport(conf: cfg.ConfigOpts, url: str | None = None) -> messaging.Transport:
    """An RPC transport for ``url`` (default: ``[DEFAULT] transport_url``)."""
    return messaging.get_rpc_transport(conf, url=url,
                                       allowed_remote_exmods=get_allowed_exmods())


def get_notification_transport(conf: cfg.ConfigOpts,
                               url: str | None = None) -> messaging.Transport:
    """A notification transport (``[oslo_messaging_notifications] transport_url``,
    else the RPC one)."""
    return messaging.get_notification_transport(conf, url=url,
                                                allowed_remote_exmods=get_allowed_exmods())


class JsonPayloadSerializer(messaging.NoOpSerializer):
    """Entities become JSON primitives (what the wire carries anyway)."""

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return jsonutils.to_primitive(entity, convert_instances=True)


class RequestContextSerializer(messaging.Serializer):
    """Contexts travel as dicts and arrive as ``oslo_context`` RequestContexts."""

    def __init__(self, base: messaging.Serializer | None = None) -> None:
        self._base = base

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity if self._base is None else self._base.serialize_entity(ctxt, entity)

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity if self._base is None else self._base.deserialize_entity(ctxt, entity)

    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        if ctxt is None:
            return {}
        if isinstance(ctxt, dict):
            return dict(ctxt)
        result: dict[str, Any] = ctxt.to_dict()
        return result

    def deserialize_context(self, ctxt: dict[str, Any]) -> oslo_context.RequestContext:
        return oslo_context.RequestContext.from_dict(ctxt or {})


def init(conf: cfg.ConfigOpts) -> None:
    """Create the process-wide transports and notifier (idempotent: cleans up first)."""
    global TRANSPORT, NOTIFICATION_TRANSPORT, NOTIFIER
    if TRANSPORT is not None:
        cleanup()
    register_opts(conf)
    TRANSPORT = get_rpc_transport(conf)
    NOTIFICATION_TRANSPORT = get_notification_transport(conf)
    NOTIFIER = messaging.Notifier(NOTIFICATION_TRANSPORT,
                                  serializer=RequestContextSerializer(JsonPayloadSerializer()))


def cleanup() -> None:
    """Release what :func:`init` created (a no-op when it was not called)."""
    global TRANSPORT, NOTIFICATION_TRANSPORT, NOTIFIER
    transports = [t for t in (TRANSPORT, NOTIFICATION_TRANSPORT) if t is not None]
    TRANSPORT = NOTIFICATION_TRANSPORT = NOTIFIER = None
    for transport in transports:
        transport.cleanup()


def initialized() -> bool:
    return TRANSPORT is not None


def get_transport() -> messaging.Transport:
    if TRANSPORT is None:
        raise RuntimeError("nova_ipmigrate.rpc.init() was not called")
    return TRANSPORT


def get_client(target: messaging.Target, version_cap: str | None = None,
               transport: messaging.Transport | None = None,
               timeout: float | None = None) -> messaging.RPCClient:
    return messaging.get_rpc_client(
        transport or get_transport(), target, version_cap=version_cap, timeout=timeout,
        serializer=RequestContextSerializer(JsonPayloadSerializer()))


def get_server(target: messaging.Target, endpoints: Sequence[Any],
               transport: messaging.Transport | None = None) -> Any:
    """An RPC server on the threading executor; ``_private`` methods are not callable."""
    with warnings.catch_warnings():
        # oslo.messaging >= 16 deprecates the argument (threading is its only
        # executor then); older ones need it not to pick another one.
        warnings.filterwarnings("ignore", message=".*'executor' argument",
                                category=DeprecationWarning)
        return messaging.get_rpc_server(
            transport or get_transport(), target, list(endpoints), executor="threading",
            serializer=RequestContextSerializer(JsonPayloadSerializer()),
            access_policy=dispatcher.DefaultRPCAccessPolicy)


def get_notifier(service: str, host: str, notifier: messaging.Notifier | None = None,
                 ) -> messaging.Notifier:
    """The notifier of ``service`` on ``host`` (publisher id ``service.host``)."""
    base = notifier or NOTIFIER
    if base is None:
        raise RuntimeError("nova_ipmigrate.rpc.init() was not called")
    return base.prepare(publisher_id=f"{service}.{host}")
