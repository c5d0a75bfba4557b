"""``openstack server reintegrate``, ``openstack server split`` and
``openstack server memory show``."""

from __future__ import annotations

import argparse
from typing import Any

from cliff import columns
from osc_lib.command import command

from nova_ipmigrate.osc.v1 import common

STRATEGIES = ("ipmigrate", "naive")


class ReintegrateServer(command.ShowOne):
    _description = ("Reintegrate a split-memory server: every host holding a part of its "
                    "memory sends it directly, in parallel, to one host (the main host "
                    "by default)")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        common.add_server(parser)
        parser.add_argument("--host", metavar="<host>", dest="target_host",
                            help="Host to gather the memory on (default: the main host)")
        parser.add_argument("--strategy", metavar="<strategy>",
                            help=f"Transfer strategy (default: ipmigrate; built in: "
                                 f"{', '.join(STRATEGIES)})")
        common.add_wait(parser, "reintegration")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        op = common.client(self.app).reintegration(
            common.server_id(self.app, parsed_args.server),
            target_host=parsed_args.target_host, strategy=parsed_args.strategy)
        if parsed_args.wait:
            op = common.wait(self.app, op)
        return common.show_operation(op)


class SplitServer(command.ShowOne):
    _description = ("Split migration: make a server's memory split across hosts; the main "
                    "host keeps the hot part, sub-hosts hold the rest")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        common.add_server(parser)
        parser.add_argument("--main-host", metavar="<host>", required=True,
                            help="The host running the server (it keeps the hot pages)")
        parser.add_argument("--path", metavar="<path>", required=True,
                            help="The server's RAM file on the main host's memfs")
        parser.add_argument("--sub-host", metavar="<host>", dest="sub_hosts",
                            action="append", default=[],
                            help="A host to hold part of the memory (repeat for more; "
                                 "default: the scheduler chooses)")
        parser.add_argument("--resident-limit", metavar="<bytes>", type=int,
                            help="Bytes of memory kept on the main host")
        common.add_wait(parser, "split migration")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        op = common.client(self.app).split(
            common.server_id(self.app, parsed_args.server), parsed_args.main_host,
            parsed_args.path, sub_hosts=parsed_args.sub_hosts,
            resident_limit=parsed_args.resident_limit)
        if parsed_args.wait:
            op = common.wait(self.app, op)
        return common.show_operation(op)


class HostsColumn(columns.FormattableColumn[list[dict[str, Any]]]):
    """``ipm-h1 (main): 4096 pages, 16.0 MiB`` per line; the list in machine formats."""

    def human_readable(self) -> str:
        return "\n".join(f"{h['host']} ({h['role']}): {h['pages']} pages, "
                         f"{common.size(h['bytes'])}" for h in self._value or ())

    def machine_readable(self) -> list[dict[str, Any]]:
        return list(self._value or ())


class ShowServerMemory(command.ShowOne):
    _description = "Show where a split-memory server's memory is: bytes per host"

    FIELDS = ("server_id", "main_host", "path", "page_size", "total_bytes", "broken",
              "active_operations", "hosts")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        common.add_server(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        mem = common.client(self.app).memory(common.server_id(self.app, parsed_args.server))
        values = tuple(HostsColumn(mem.get(f) or []) if f == "hosts" else mem.get(f)
                       for f in self.FIELDS)
        return self.FIELDS, values
