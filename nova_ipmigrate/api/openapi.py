"""The OpenAPI 3.0 description of the API, built from the schemas that validate
requests (``GET /v1/openapi.json``; ``python -m nova_ipmigrate.api.openapi``)."""

from __future__ import annotations

import json
from typing import Any

from nova_ipmigrate.api import schemas
from nova_ipmigrate.engine.models import STATES

_ERR = {"description": "error (API-SIG format)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}}
_OP = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["operation"],
    "properties": {"operation": {"$ref": "#/components/schemas/Operation"}}}}}}
_AUTH: list[dict[str, list[str]]] = [{"token": []}]
_NULLSTR = {"type": "string", "nullable": True}


def oas30(schema: Any) -> Any:
    """A JSON schema (draft 2020-12, as the API validates) in OpenAPI 3.0's dialect:
    a numeric ``exclusiveMinimum``/``exclusiveMaximum`` becomes the bound with the
    boolean flag (draft 4)."""
    if isinstance(schema, list):
        return [oas30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: oas30(v) for k, v in schema.items()}
    for excl, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(excl)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[bound], out[excl] = value, True
    return out


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERR for c in codes}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1}}


def document() -> dict[str, Any]:
    operation = {"type": "object", "required": ["id", "kind", "state", "progress", "links"],
                 "properties": {
                     "id": {"type": "string"}, "kind": {"type": "string"},
                     "state": {"type": "string"}, "step": {"type": "string"},
                     "server_id": _NULLSTR, "main_host": _NULLSTR, "source_host": _NULLSTR,
                     "dest_host": _NULLSTR, "strategy": _NULLSTR, "fault": _NULLSTR,
                     "parent_id": _NULLSTR, "created_at": _NULLSTR, "updated_at": _NULLSTR,
                     "started_at": _NULLSTR, "finished_at": _NULLSTR,
                     "progress": {"type": "object",
                                  "properties": {"percent": {"type": "number"}}},
                     "links": {"type": "array"}, "children": {"type": "array"}}}
    host = {"type": "object", "required": ["host", "role", "pages", "bytes"],
            "properties": {"host": {"type": "string"},
                           "role": {"type": "string", "enum": ["main", "sub"]},
                           "pages": {"type": "integer", "minimum": 0},
                           "bytes": {"type": "integer", "minimum": 0}}}
    memory = {"type": "object",
              "required": ["server_id", "main_host", "page_size", "total_bytes", "hosts"],
              "properties": {"server_id": {"type": "string"}, "main_host": {"type": "string"},
                             "path": _NULLSTR, "page_size": {"type": "integer"},
                             "total_bytes": {"type": "integer", "minimum": 0},
                             "broken": {"type": "boolean"},
                             "active_operations": {"type": "array"},
                             "hosts": {"type": "array", "items": host}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "nova-ipmigrate API (memory-migration)", "version": "1.1",
                 "description": "This document describes API version 1.1: send "
                                "'OpenStack-API-Version: memory-migration 1.1' (without "
                                "it a request is served as 1.0, which has no "
                                "main_host_migration action)."},
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header",
                                          "name": "X-Auth-Token"}},
            "schemas": {
                "Operation": operation,
                "Memory": memory,
                "Errors": {"type": "object", "required": ["errors"], "properties": {
                    "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "status": {"type": "integer"}, "code": {"type": "string"},
                        "title": {"type": "string"}, "detail": {"type": "string"}}}}}},
            }},
        "security": _AUTH,
        "paths": {
            "/v1/servers/{server_id}/action": {"post": {
                "summary": "Request an operation on a server",
                "parameters": [_path_param("server_id")],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": oas30(schemas.server_action((1, 1)))}}},
                "responses": {"202": {"description": "accepted", **_OP},
                              **_errors(400, 401, 403, 404, 406, 409, 415, 503)}}},
            "/v1/servers/{server_id}/memory": {"get": {
                "summary": "Where a split server's memory is",
                "parameters": [_path_param("server_id")],
                "responses": {"200": {"description": "the layout", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["memory"], "properties": {
                            "memory": {"$ref": "#/components/schemas/Memory"}}}}}},
                    **_errors(401, 403, 404, 406, 503)}}},
            "/v1/operations": {"get": {
                "summary": "List operations, newest first",
                "parameters": [
                    {"name": "server_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "state", "in": "query",
                     "schema": {"type": "string", "enum": list(STATES)}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1}},
                    {"name": "marker", "in": "query",
                     "schema": {"type": "string", "minLength": 1}}],
                "responses": {"200": {"description": "a page", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["operations"], "properties": {
                            "operations": {"type": "array", "items": {
                                "$ref": "#/components/schemas/Operation"}}}}}}},
                    **_errors(400, 401, 403, 406, 503)}}},
            "/v1/operations/{operation_id}": {"get": {
                "summary": "Show an operation",
                "parameters": [_path_param("operation_id")],
                "responses": {"200": {"description": "the operation", **_OP},
                              **_errors(401, 403, 404, 406, 503)}}},
            "/v1/operations/{operation_id}/abort": {"post": {
                "summary": "Abort an operation",
                "parameters": [_path_param("operation_id")],
                "responses": {"202": {"description": "aborting", **_OP},
                              **_errors(401, 403, 404, 406, 409, 503)}}},
            "/v1/hosts/{host}/drain": {"post": {
                "summary": "Move every part off a host",
                "parameters": [_path_param("host")],
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": oas30(schemas.DRAIN)}}},
                "responses": {"202": {"description": "accepted", **_OP},
                              **_errors(400, 401, 403, 404, 406, 409, 415, 503)}}},
        }}


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, sort_keys=True))
