"""``openstack server partial migration list|show|abort``: the operations of the
memory-migration service (partial migrations, reintegrations, splits, drains)."""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib.command import command

from nova_ipmigrate.osc.v1 import common

STATES = ("queued", "running", "aborting", "done", "failed", "aborted")


class ListPartialMigration(command.Lister):
    _description = "List memory-migration operations, newest first"

    COLUMNS = (("id", "ID"), ("kind", "Kind"), ("state", "State"),
               ("server_id", "Server ID"), ("source_host", "Source Host"),
               ("dest_host", "Destination Host"), ("progress", "Progress"))
    LONG = (("step", "Step"), ("strategy", "Strategy"), ("main_host", "Main Host"),
            ("parent_id", "Parent ID"), ("fault", "Fault"), ("created_at", "Created At"),
            ("finished_at", "Finished At"))

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--server", metavar="<server>",
                            help="Only this server's operations (name or ID)")
        parser.add_argument("--state", metavar="<state>", choices=STATES,
                            help=f"Only operations in this state ({', '.join(STATES)})")
        parser.add_argument("--limit", metavar="<limit>", type=int,
                            help="At most this many (one page; default: all)")
        parser.add_argument("--marker", metavar="<operation>",
                            help="Start after this operation (the last of the previous "
                                 "page)")
        parser.add_argument("--long", action="store_true", default=False,
                            help="List more fields")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        server = (None if parsed_args.server is None
                  else common.server_id(self.app, parsed_args.server))
        ops = common.client(self.app).operations(server_id=server, state=parsed_args.state,
                                                 limit=parsed_args.limit,
                                                 marker=parsed_args.marker)
        cols = self.COLUMNS + (self.LONG if parsed_args.long else ())
        rows = (tuple(common.ProgressColumn(op.get(k) or {}) if k == "progress" else op.get(k)
                      for k, _ in cols) for op in ops)
        return tuple(h for _, h in cols), rows


class ShowPartialMigration(command.ShowOne):
    _description = "Show a memory-migration operation and its progress"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("operation", metavar="<operation>", help="Operation ID")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        return common.show_operation(common.client(self.app).operation(parsed_args.operation))


class AbortPartialMigration(command.Command):
    _description = ("Abort a memory-migration operation: the part stays where it was "
                    "(copies already made are dropped)")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("operation", metavar="<operation>", help="Operation ID")
        common.add_wait(parser, "abort")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        op = common.client(self.app).abort(parsed_args.operation)
        if parsed_args.wait:
            common.wait(self.app, op or {"id": parsed_args.operation}, expect="aborted")
