"""A client of the ``memory-migration`` API (``ipmigrate-api``) over a keystoneauth1
session: the session authenticates (a keystone token, or the ``admin_token`` of a
``noauth2`` lab), this class builds the requests and turns the API's errors into
:class:`APIError`."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

SERVICE_TYPE = "memory-migration"
#: the newest API version this client knows
MAX_VERSION = "1.1"
#: an operation in one of these states is over
FINAL_STATES = frozenset({"done", "failed", "aborted"})


class APIError(Exception):
    """The API refused a request: its HTTP status and the API-SIG error fields."""

    def __init__(self, status: int, code: str, detail: str,
                 request_id: str | None = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        rid = f", request {request_id}" if request_id else ""
        super().__init__(f"{detail} (HTTP {status} {code}{rid})")


class Client:
    """``session``: a keystoneauth1 Session; ``endpoint``: the service's URL (the
    catalog's, with or without ``/v1``); ``api_version``: ``1`` (the newest this
    client knows) or ``1.N``."""

    def __init__(self, session: Any, endpoint: str, api_version: str = "1",
                 timeout: float | None = 60.0) -> None:
        if not endpoint:
            raise ValueError(f"no endpoint for service type {SERVICE_TYPE!r}: is it "
                             "in the catalog (or give --os-endpoint)?")
        self.session = session
        base = endpoint.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.api_version = MAX_VERSION if "." not in str(api_version) else str(api_version)
        self.timeout = timeout

    # -- transport ------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        headers = {"OpenStack-API-Version": f"{SERVICE_TYPE} {self.api_version}",
                   "Accept": "application/json"}
        kwargs: dict[str, Any] = {"headers": headers, "raise_exc": False}
        if body is not None:
            kwargs["json"] = body
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        resp = self.session.request(url, method, **kwargs)
        try:
            data = resp.json() if resp.content else {}
        except ValueError:
            data = {}
        if resp.status_code >= 400:
            errors = data.get("errors") if isinstance(data, dict) else None
            err = errors[0] if errors else {}
            raise APIError(resp.status_code, str(err.get("code", "error")),
                           str(err.get("detail") or err.get("title") or resp.text
                               or resp.reason),
                           err.get("request_id") or resp.headers.get("X-OpenStack-Request-ID"))
        return data if isinstance(data, dict) else {}

    # -- servers ----------------------------------------------------------------------

    def server_action(self, server_id: str, action: str,
                      args: dict[str, Any]) -> dict[str, Any]:
        """Start an action (``partial_migration``, ``reintegration``, ``split``,
        ``main_host_migration``); the operation."""
        body = {action: {k: v for k, v in args.items() if v is not None}}
        return dict(self._request("POST", f"/servers/{_q(server_id)}/action",
                                  body)["operation"])

    def partial_migration(self, server_id: str, source_host: str,
                          dest_host: str | None = None, strategy: str | None = None,
                          max_rate_mb_s: float | None = None) -> dict[str, Any]:
        return self.server_action(server_id, "partial_migration", {
            "source_host": source_host, "dest_host": dest_host, "strategy": strategy,
            "max_rate_mb_s": max_rate_mb_s})

    def reintegration(self, server_id: str, target_host: str | None = None,
                      strategy: str | None = None) -> dict[str, Any]:
        return self.server_action(server_id, "reintegration",
                                  {"target_host": target_host, "strategy": strategy})

    def split(self, server_id: str, main_host: str, path: str,
              sub_hosts: list[str] | None = None,
              resident_limit: int | None = None) -> dict[str, Any]:
        return self.server_action(server_id, "split", {
            "main_host": main_host, "path": path, "sub_hosts": sub_hosts or None,
            "resident_limit": resident_limit})

    def memory(self, server_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/servers/{_q(server_id)}/memory")["memory"])

    # -- operations -------------------------------------------------------------------

    def operations(self, server_id: str | None = None, state: str | None = None,
                   limit: int | None = None, marker: str | None = None) -> list[dict[str, Any]]:
        """Operations, newest first. With ``limit``: one page; without: every page."""
        if limit is not None:
            return list(self._page(server_id, state, limit, marker)[0])
        return list(self.iter_operations(server_id, state, marker))

    def iter_operations(self, server_id: str | None = None, state: str | None = None,
                        marker: str | None = None) -> Iterator[dict[str, Any]]:
        while True:
            ops, next_marker = self._page(server_id, state, None, marker)
            yield from ops
            if next_marker is None or not ops:
                return
            marker = next_marker

    def _page(self, server_id: str | None, state: str | None, limit: int | None,
              marker: str | None) -> tuple[list[dict[str, Any]], str | None]:
        data = self._request("GET", "/operations", params={
            "server_id": server_id, "state": state, "limit": limit, "marker": marker})
        next_marker = None
        for link in data.get("operations_links") or ():
            if link.get("rel") == "next":
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(link["href"]).query)
                next_marker = (query.get("marker") or [None])[0]
        return list(data.get("operations") or ()), next_marker

    def operation(self, op_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/operations/{_q(op_id)}")["operation"])

    def abort(self, op_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/operations/{_q(op_id)}/abort")
                    .get("operation") or {})

    def wait(self, op_id: str, interval: float = 1.0, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll an operation until it is over; its final state. ``on_progress`` gets
        every state seen. Raises TimeoutError past ``timeout`` (the operation goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            op = self.operation(op_id)
            if on_progress is not None:
                on_progress(op)
            if op["state"] in FINAL_STATES:
                return op
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"operation {op_id} is still {op['state']} after "
                                   f"{timeout:.0f}s")
            time.sleep(interval)

    # -- hosts ------------------------------------------------------------------------

    def drain(self, host: str, exclude: list[str] | None = None) -> dict[str, Any]:
        body = {"drain": {"exclude": list(exclude)}} if exclude else None
        return dict(self._request("POST", f"/hosts/{_q(host)}/drain", body)["operation"])


def _q(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")
