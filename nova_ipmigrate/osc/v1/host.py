"""``openstack compute host drain``: move every part of memory a host holds
elsewhere, before its maintenance."""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib.command import command

from nova_ipmigrate.osc.v1 import common


class DrainHost(command.ShowOne):
    _description = ("Move every part of split-memory servers that a host holds as a "
                    "sub-host to other hosts (one partial migration per part). Servers "
                    "whose main host it is are reported, not moved")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("host", metavar="<host>", help="Compute host to drain")
        parser.add_argument("--exclude", metavar="<host>", action="append", default=[],
                            help="Do not move parts to this host (repeat for more)")
        common.add_wait(parser, "drain")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        c = common.client(self.app)
        op = c.drain(parsed_args.host, exclude=parsed_args.exclude)
        if parsed_args.wait:
            op = common.wait(self.app, op)
            op = c.operation(op["id"])      # with its part moves
        return common.show_operation(op)
