"""What the commands share: the server argument, the display of an operation, and
``--wait`` with its progress bar."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from cliff import columns
from osc_lib import exceptions

from nova_ipmigrate.osc.client import Client
from nova_ipmigrate.osc.progress import ProgressBar

#: ``--wait`` polls this often (seconds)
POLL_INTERVAL = 0.5

OPERATION_FIELDS = ("id", "kind", "state", "step", "server_id", "main_host", "source_host",
                    "dest_host", "strategy", "progress", "fault", "parent_id", "created_at",
                    "started_at", "updated_at", "finished_at")


class ProgressColumn(columns.FormattableColumn[dict[str, Any]]):
    """``45.0% (1200/2650 pages, 4.7 MiB)``; the whole dict in machine formats."""

    def human_readable(self) -> str:
        pr = self._value or {}
        text = f"{float(pr.get('percent') or 0):.1f}%"
        if pr.get("pages_total"):
            text += (f" ({pr.get('pages_done', 0)}/{pr['pages_total']} pages, "
                     f"{size(pr.get('bytes_done', 0))})")
        return text

    def machine_readable(self) -> dict[str, Any]:
        return dict(self._value or {})


class ChildrenColumn(columns.FormattableColumn[list[dict[str, Any]]]):
    """A drain's part moves, one per line: ``<id> <state> <source> -> <dest>``."""

    def human_readable(self) -> str:
        return "\n".join(f"{c['id']} {c['state']} {c.get('source_host')} -> "
                         f"{c.get('dest_host')}" for c in self._value or ())

    def machine_readable(self) -> list[dict[str, Any]]:
        return [{k: c.get(k) for k in OPERATION_FIELDS} for c in self._value or ()]


def size(n: Any) -> str:
    """``4.0 KiB``, ``12.5 MiB``, ``2.0 GiB``."""
    value = float(int(n or 0))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def client(app: Any) -> Client:
    cm: Any = app.client_manager
    ipm: Client = cm.ipmigrate
    return ipm


def add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", metavar="<server>", help="Server (name or ID)")


def server_id(app: Any, value: str) -> str:
    """A server's ID: ``value`` itself when it is a UUID, else looked up by name in
    Nova (the compute API of the same cloud)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        pass
    try:
        server = app.client_manager.compute.find_server(value, ignore_missing=False)
    except Exception as exc:  # noqa: BLE001 - shown to the user as the reason
        raise exceptions.CommandError(f"no server {value!r}: {exc}") from exc
    return str(server.id)


def add_wait(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true",
                        help=f"Wait for the {what} to end, showing its progress on stderr")


def wait(app: Any, op: dict[str, Any], expect: str = "done") -> dict[str, Any]:
    """Follow an operation to its end with a progress bar on stderr; its final state.
    An end other than ``expect`` is a CommandError (exit status 1)."""
    bar = ProgressBar(app.stderr)
    try:
        final = client(app).wait(op["id"], interval=POLL_INTERVAL, on_progress=bar)
    except KeyboardInterrupt:
        bar.close()
        raise exceptions.CommandError(
            f"stopped waiting: operation {op['id']} goes on (abort it with "
            f"'openstack server partial migration abort {op['id']}')") from None
    bar.close()
    if final["state"] != expect:
        fault = f": {final['fault']}" if final.get("fault") else ""
        raise exceptions.CommandError(f"{final['kind']} {final['id']} ended "
                                      f"{final['state']}{fault}")
    return final


def show_operation(op: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """A ShowOne's columns and values for an operation."""
    fields = list(OPERATION_FIELDS)
    values: list[Any] = []
    for f in fields:
        v = op.get(f)
        values.append(ProgressColumn(v or {}) if f == "progress" else v)
    if "children" in op:
        fields.append("children")
        values.append(ChildrenColumn(op["children"]))
    return tuple(fields), tuple(values)
