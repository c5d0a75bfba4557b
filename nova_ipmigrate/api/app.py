"""The WSGI application of ``ipmigrate-api`` (contract: ``doc/api-ref.md``).

Pipeline: request id -> auth (keystonemiddleware's auth_token, or ``noauth2``) ->
the router below, which builds the request context, enforces policy, parses the
microversion, validates the body and calls the engine (``EngineAPI`` or anything
with its methods). A refused request changes nothing: it is refused before the
engine is asked, or by the engine's own validation.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import jsonschema
import microversion_parse
import oslo_messaging as messaging
import webob
import webob.dec
import webob.exc
from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_log import log as logging
from oslo_policy import policy as oslo_policy

from nova_ipmigrate import exception
from nova_ipmigrate.api import openapi, policies, schemas
from nova_ipmigrate.engine.models import STATES

LOG = logging.getLogger(__name__)
SERVICE_TYPE = "memory-migration"
MIN_VERSION = (1, 0)
MAX_VERSION = (1, 1)
PAGE_SIZE = 4096
VERSION_HEADER = "OpenStack-API-Version"


class APIError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _vstr(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def _error_response(req: webob.Request, err: APIError) -> webob.Response:
    title = webob.exc.status_map[err.status].title
    body = {"errors": [{"status": err.status, "code": err.code, "title": title,
                        "detail": err.detail,
                        "request_id": req.environ.get("openstack.request_id")}]}
    return webob.Response(status=err.status, json_body=body, charset="utf-8")


def _engine_error(exc: Exception) -> APIError:
    if isinstance(exc, exception.NotFound):
        return APIError(404, "ipmigrate.not_found", exc.format_message())
    if isinstance(exc, exception.InsufficientCapacity):
        return APIError(409, "ipmigrate.insufficient_capacity", exc.format_message())
    if isinstance(exc, exception.Conflict):
        return APIError(409, "ipmigrate.conflict", exc.format_message())
    if isinstance(exc, exception.Invalid):
        return APIError(400, "ipmigrate.invalid", exc.format_message())
    if isinstance(exc, (exception.Unavailable, messaging.MessagingTimeout,
                        messaging.MessageDeliveryFailure)):
        return APIError(503, "ipmigrate.unavailable", f"the engine did not answer: {exc}")
    raise exc


def operation_view(op: dict[str, Any], base: str) -> dict[str, Any]:
    """An engine operation as the API shows it (internal parameters hidden)."""
    pr = dict(op.get("progress") or {})
    done, total = int(pr.get("pages_done", 0) or 0), int(pr.get("pages_total", 0) or 0)
    if op.get("state") == "done":
        pct = 100.0
    else:
        pct = round(100.0 * done / total, 1) if total else 0.0
    pr["percent"] = min(pct, 100.0)
    keys = ("id", "kind", "state", "step", "main_host", "source_host", "dest_host",
            "strategy", "fault", "parent_id", "created_at", "updated_at", "started_at",
            "finished_at")
    out: dict[str, Any] = {k: op.get(k) for k in keys}
    out["server_id"] = op.get("vm")
    out["progress"] = pr
    out["links"] = [{"rel": "self", "href": f"{base}/v1/operations/{op['id']}"}]
    if "children" in op:
        out["children"] = [operation_view(c, base) for c in op["children"]]
    return out


def memory_view(vm: dict[str, Any]) -> dict[str, Any]:
    main = str(vm["main_host"])
    pages = {str(h): int(n) for h, n in dict(vm.get("pages_by_host") or {}).items()}
    pages.setdefault(main, 0)
    order = [main] + sorted(h for h in pages if h != main)
    hosts = [{"host": h, "role": "main" if h == main else "sub", "pages": pages[h],
              "bytes": pages[h] * PAGE_SIZE} for h in order]
    return {"server_id": vm["vm"], "main_host": main, "path": vm.get("path"),
            "page_size": PAGE_SIZE, "total_bytes": sum(h["bytes"] for h in hosts),
            "broken": bool(vm.get("broken")),
            "active_operations": list(vm.get("active_operations") or []), "hosts": hosts}


Route = tuple[str, "re.Pattern[str]", str]
ROUTES: list[Route] = [
    ("GET", re.compile(r"^/?$"), "versions"),
    ("GET", re.compile(r"^/v1/?$"), "version"),
    ("GET", re.compile(r"^/v1/openapi\.json$"), "openapi"),
    ("POST", re.compile(r"^/v1/servers/(?P<server_id>[^/]+)/action$"), "server_action"),
    ("GET", re.compile(r"^/v1/servers/(?P<server_id>[^/]+)/memory$"), "memory"),
    ("GET", re.compile(r"^/v1/operations$"), "list_operations"),
    ("GET", re.compile(r"^/v1/operations/(?P<op_id>[^/]+)$"), "show_operation"),
    ("POST", re.compile(r"^/v1/operations/(?P<op_id>[^/]+)/abort$"), "abort"),
    ("POST", re.compile(r"^/v1/hosts/(?P<host>[^/]+)/drain$"), "drain"),
]
PUBLIC = ("versions", "version")


class API:
    """The router and the resources."""

    def __init__(self, conf: cfg.ConfigOpts, engine: Any) -> None:
        self.conf = conf
        self.engine = engine
        self.enforcer = policies.enforcer(conf)

    # -- plumbing -------------------------------------------------------------------

    @webob.dec.wsgify
    def __call__(self, req: webob.Request) -> webob.Response:
        try:
            return self._dispatch(req)
        except APIError as err:
            return _error_response(req, err)
        except Exception:   # an engine error we do not map, a bug: 500, logged
            LOG.exception("%s %s failed", req.method, req.path)
            return _error_response(req, APIError(500, "ipmigrate.internal",
                                                 "internal error (see the API's log)"))

    def _dispatch(self, req: webob.Request) -> webob.Response:
        methods = []
        for method, pattern, name in ROUTES:
            m = pattern.match(req.path_info)
            if m is None:
                continue
            methods.append(method)
            if method != req.method:
                continue
            if name in PUBLIC:
                return webob.Response(json_body=getattr(self, name)(req), charset="utf-8")
            version = self._version(req)
            ctxt = self._context(req)
            params = m.groupdict()
            for key, value in params.items():
                # no server, operation or host has a blank name
                if not value.strip():
                    raise APIError(404, "ipmigrate.not_found",
                                   f"no {key.replace('_id', '')} {value!r}")
            resp = getattr(self, name)(req, ctxt, version, **params)
            resp.headers[VERSION_HEADER] = f"{SERVICE_TYPE} {_vstr(version)}"
            resp.headers["Vary"] = VERSION_HEADER
            return resp
        if methods:
            err = APIError(405, "ipmigrate.method_not_allowed",
                           f"{req.method} is not allowed on {req.path_info} "
                           f"(allowed: {', '.join(sorted(set(methods)))})")
            resp = _error_response(req, err)
            resp.headers["Allow"] = ", ".join(sorted(set(methods)))
            return resp
        raise APIError(404, "ipmigrate.not_found", f"no resource {req.path_info}")

    def _version(self, req: webob.Request) -> tuple[int, int]:
        raw = microversion_parse.get_version(req.headers, service_type=SERVICE_TYPE)
        if raw is None:
            return MIN_VERSION
        if raw == "latest":
            return MAX_VERSION
        m = re.fullmatch(r"(\d+)\.(\d+)", raw.strip())
        v = (int(m.group(1)), int(m.group(2))) if m else None
        if v is None or not MIN_VERSION <= v <= MAX_VERSION:
            raise APIError(406, "ipmigrate.unsupported_version",
                           f"version {raw!r} is not supported: {_vstr(MIN_VERSION)} to "
                           f"{_vstr(MAX_VERSION)}")
        return v

    def _context(self, req: webob.Request) -> oslo_context.RequestContext:
        return oslo_context.RequestContext.from_environ(req.environ)

    def _authorize(self, ctxt: oslo_context.RequestContext, rule: str,
                   target: dict[str, Any] | None = None) -> None:
        creds = ctxt.to_policy_values()
        try:
            self.enforcer.authorize(rule, target or {"project_id": ctxt.project_id},
                                    creds, do_raise=True)
        except oslo_policy.PolicyNotAuthorized as exc:
            raise APIError(403, "ipmigrate.forbidden",
                           f"policy does not allow {rule} to be performed") from exc

    def _body(self, req: webob.Request, schema: dict[str, Any],
              optional: bool = False) -> dict[str, Any]:
        if not req.body:
            if optional:
                return {}
            raise APIError(400, "ipmigrate.invalid", "this request needs a JSON body")
        ctype = (req.content_type or "application/json").split(";")[0].strip()
        if ctype != "application/json":
            raise APIError(415, "ipmigrate.unsupported_media_type",
                           f"the body must be application/json, not {ctype}")
        try:
            body = json.loads(req.body)
        except ValueError as exc:
            raise APIError(400, "ipmigrate.invalid", f"malformed JSON body: {exc}") from exc
        try:
            jsonschema.validate(body, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "body"
            raise APIError(400, "ipmigrate.invalid",
                           f"invalid request at {where}: {exc.message}") from exc
        return dict(body)

    def _call(self, ctxt: oslo_context.RequestContext, method: str, *args: Any,
              **kwargs: Any) -> Any:
        try:
            return getattr(self.engine, method)(ctxt.to_dict(), *args, **kwargs)
        except Exception as exc:  # mapped, or re-raised as a 500
            raise _engine_error(exc) from exc

    def _base(self, req: webob.Request) -> str:
        return str(req.application_url).rstrip("/")

    def _accepted(self, req: webob.Request, op: dict[str, Any]) -> webob.Response:
        view = operation_view(op, self._base(req))
        resp = webob.Response(status=202, json_body={"operation": view}, charset="utf-8")
        resp.headers["Location"] = view["links"][0]["href"]
        return resp

    # -- resources ------------------------------------------------------------------

    def _version_doc(self, req: webob.Request) -> dict[str, Any]:
        return {"id": "v1", "status": "CURRENT", "min_version": _vstr(MIN_VERSION),
                "max_version": _vstr(MAX_VERSION),
                "links": [{"rel": "self", "href": f"{self._base(req)}/v1/"}]}

    def versions(self, req: webob.Request) -> dict[str, Any]:
        return {"versions": [self._version_doc(req)]}

    def version(self, req: webob.Request) -> dict[str, Any]:
        return {"version": self._version_doc(req)}

    def openapi(self, req: webob.Request, ctxt: Any, version: tuple[int, int]
                ) -> webob.Response:
        return webob.Response(json_body=openapi.document(), charset="utf-8")

    def server_action(self, req: webob.Request, ctxt: Any, version: tuple[int, int],
                      server_id: str) -> webob.Response:
        self._authorize(ctxt, "ipmigrate:server:action")
        body = self._body(req, schemas.server_action(version))
        (action, args), = body.items()
        if action == "partial_migration":
            op = self._call(ctxt, "partial_migration", server_id, args["source_host"],
                            dest_host=args.get("dest_host"),
                            strategy=args.get("strategy", "ipmigrate"),
                            max_rate_mb_s=args.get("max_rate_mb_s"))
        elif action == "reintegration":
            op = self._call(ctxt, "reintegration", server_id,
                            target_host=args.get("target_host"),
                            strategy=args.get("strategy", "ipmigrate"))
        elif action == "split":
            op = self._call(ctxt, "split", args["main_host"], args["path"], server_id,
                            sub_hosts=args.get("sub_hosts", []),
                            resident_limit=args.get("resident_limit"))
        else:
            op = self._call(ctxt, "main_host_migration", server_id,
                            dest_host=args.get("dest_host"))
        return self._accepted(req, op)

    def memory(self, req: webob.Request, ctxt: Any, version: tuple[int, int],
               server_id: str) -> webob.Response:
        self._authorize(ctxt, "ipmigrate:server:memory:show")
        vm = self._call(ctxt, "show_vm", server_id)
        return webob.Response(json_body={"memory": memory_view(vm)}, charset="utf-8")

    def list_operations(self, req: webob.Request, ctxt: Any, version: tuple[int, int]
                        ) -> webob.Response:
        self._authorize(ctxt, "ipmigrate:operation:list")
        params = dict(req.GET)
        unknown = sorted(set(params) - {"server_id", "state", "limit", "marker"})
        if unknown or len(req.GET) != len(params):
            raise APIError(400, "ipmigrate.invalid",
                           f"unknown or repeated query parameters: {', '.join(unknown)}")
        state = params.get("state")
        if state is not None and state not in STATES:
            raise APIError(400, "ipmigrate.invalid",
                           f"unknown state {state!r} (one of {', '.join(STATES)})")
        max_limit = int(self.conf.api.max_limit)
        try:
            limit = int(params.get("limit", max_limit))
        except ValueError as exc:
            raise APIError(400, "ipmigrate.invalid", "limit must be an integer") from exc
        if limit < 1:
            raise APIError(400, "ipmigrate.invalid", "limit must be at least 1")
        limit = min(limit, max_limit)
        ops = self._call(ctxt, "list_operations", vm=params.get("server_id") or None,
                         state=state)
        ops = sorted(ops, key=lambda o: (str(o.get("created_at") or ""), str(o["id"])),
                     reverse=True)
        marker = params.get("marker")
        if marker is not None:
            ids = [str(o["id"]) for o in ops]
            if marker not in ids:
                raise APIError(400, "ipmigrate.invalid", f"marker {marker!r} not found")
            ops = ops[ids.index(marker) + 1:]
        page, more = ops[:limit], len(ops) > limit
        base = self._base(req)
        body: dict[str, Any] = {"operations": [operation_view(o, base) for o in page]}
        if more:
            q = {k: v for k, v in params.items() if k not in ("limit", "marker")}
            q.update(limit=str(limit), marker=str(page[-1]["id"]))
            body["operations_links"] = [{"rel": "next",
                                         "href": f"{base}/v1/operations?{urlencode(q)}"}]
        return webob.Response(json_body=body, charset="utf-8")

    def show_operation(self, req: webob.Request, ctxt: Any, version: tuple[int, int],
                       op_id: str) -> webob.Response:
        self._authorize(ctxt, "ipmigrate:operation:show")
        op = self._call(ctxt, "show_operation", op_id)
        return webob.Response(json_body={"operation": operation_view(op, self._base(req))},
                              charset="utf-8")

    def abort(self, req: webob.Request, ctxt: Any, version: tuple[int, int],
              op_id: str) -> webob.Response:
        self._authorize(ctxt, "ipmigrate:operation:abort")
        return self._accepted(req, self._call(ctxt, "abort_operation", op_id))

    def drain(self, req: webob.Request, ctxt: Any, version: tuple[int, int],
              host: str) -> webob.Response:
        self._authorize(ctxt, "ipmigrate:host:drain")
        body = self._body(req, schemas.DRAIN, optional=True)
        exclude = list((body.get("drain") or {}).get("exclude") or [])
        return self._accepted(req, self._call(ctxt, "host_drain", host, exclude=exclude))


class NoAuth2:
    """``[api] auth_strategy = noauth2``: ``X-Auth-Token: <user>:<project>``; the user
    ``admin`` gets the admin role (as Nova's noauth2). No token: 401."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    @webob.dec.wsgify
    def __call__(self, req: webob.Request) -> Any:
        if req.path_info.rstrip("/") in ("", "/v1"):
            return self.app
        token = req.headers.get("X-Auth-Token", "")
        user, _sep, project = token.partition(":")
        if not user:
            return _error_response(req, APIError(401, "ipmigrate.unauthorized",
                                                 "no X-Auth-Token: <user>:<project>"))
        roles = "admin,member,reader" if user == "admin" else "member,reader"
        req.environ.update(HTTP_X_USER_ID=user, HTTP_X_PROJECT_ID=project or user,
                           HTTP_X_ROLES=roles, HTTP_X_IDENTITY_STATUS="Confirmed")
        return self.app


class RequestId:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    @webob.dec.wsgify
    def __call__(self, req: webob.Request) -> Any:
        rid = f"req-{uuid.uuid4()}"
        req.environ["openstack.request_id"] = rid
        resp = req.get_response(self.app)
        resp.headers["X-OpenStack-Request-Id"] = rid
        return resp


def make_app(conf: cfg.ConfigOpts, engine: Any = None) -> Any:
    """The WSGI application; ``engine`` defaults to an ``EngineAPI`` on
    ``[DEFAULT] transport_url``."""
    if engine is None:
        from nova_ipmigrate.engine import client
        engine = client.connect(conf, timeout=float(conf.api.engine_timeout))
    app: Any = API(conf, engine)
    if conf.api.auth_strategy == "noauth2":
        app = NoAuth2(app)
    else:
        from keystonemiddleware import auth_token
        app = auth_token.AuthProtocol(app, {"oslo_config_config": conf,
                                            "delay_auth_decision": False})
    return RequestId(app)
