"""JSON schemas of the API's request bodies (validation and the OpenAPI document)."""

from __future__ import annotations

from typing import Any

#: a compute host's name: Nova's ``fqdn`` parameter type (one regex dialect: the
#: same in Python's ``re`` and in ECMA-262, as OpenAPI tools read it)
HOST: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255,
                        "pattern": r"^[A-Za-z0-9._-]+$"}
HOSTS: dict[str, Any] = {"type": "array", "items": HOST, "uniqueItems": True}
STRATEGY: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 32}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


PARTIAL_MIGRATION = _obj({"source_host": HOST, "dest_host": HOST, "strategy": STRATEGY,
                          "max_rate_mb_s": {"type": "number", "exclusiveMinimum": 0}},
                         ("source_host",))
REINTEGRATION = _obj({"target_host": HOST, "strategy": STRATEGY})
SPLIT = _obj({"main_host": HOST, "path": {"type": "string", "minLength": 1,
                                          "maxLength": 1024},
              "sub_hosts": HOSTS, "resident_limit": {"type": "integer", "minimum": 0}},
             ("main_host", "path"))
MAIN_HOST_MIGRATION = _obj({"dest_host": HOST})

#: action name -> (schema of its body, the first microversion that has it)
ACTIONS: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "partial_migration": (PARTIAL_MIGRATION, (1, 0)),
    "reintegration": (REINTEGRATION, (1, 0)),
    "split": (SPLIT, (1, 0)),
    "main_host_migration": (MAIN_HOST_MIGRATION, (1, 1)),
}


def server_action(version: tuple[int, int]) -> dict[str, Any]:
    """The body of ``POST /v1/servers/{id}/action`` at ``version``: one action."""
    actions = {k: s for k, (s, since) in ACTIONS.items() if version >= since}
    return {"type": "object", "properties": actions, "minProperties": 1,
            "maxProperties": 1, "additionalProperties": False}


DRAIN: dict[str, Any] = {"type": "object", "properties": {"drain": _obj({"exclude": HOSTS})},
                         "additionalProperties": False}
