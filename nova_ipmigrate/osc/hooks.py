"""``openstack server migrate --partial <source-host>``: a cliff command hook
(entry point namespace ``openstack.cli.server_migrate``) on OSC's own
``server migrate``.

The hook adds its options to the command's parser and wraps the command's
``take_action``: with ``--partial`` the request goes to the memory-migration
service (``--host`` is the optional destination, ``--wait`` follows it with a
progress bar); without it, ``server migrate`` is OSC's, untouched.
"""

from __future__ import annotations

import argparse
from typing import Any

from cliff import hooks
from osc_lib import exceptions

from nova_ipmigrate.osc.v1 import common

#: ``server migrate`` options that mean a Nova migration, not a partial one
NOVA_ONLY = (("live_migration", "--live-migration"), ("block_migration", "--block-migration"),
             ("disk_overcommit", "--disk-overcommit"))


class PartialMigrateHook(hooks.CommandHook):
    def __init__(self, command: Any) -> None:
        super().__init__(command)
        original = command.take_action

        def take_action(parsed_args: argparse.Namespace) -> Any:
            if getattr(parsed_args, "partial", None) is None:
                return original(parsed_args)
            return partial_migrate(command.app, parsed_args)

        command.take_action = take_action

    def get_parser(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = parser.add_argument_group(
            "partial migration (nova-ipmigrate)",
            "Move only the part of a split-memory server's memory held by one host; "
            "the server keeps running. --host is the destination (default: the "
            "scheduler chooses); --wait shows the progress")
        group.add_argument("--partial", metavar="<source-host>",
                           help="Move the part of the server held by this host")
        group.add_argument("--strategy", metavar="<strategy>",
                           help="Transfer strategy (with --partial; default: ipmigrate)")
        group.add_argument("--max-rate", metavar="<MiB/s>", type=float, dest="max_rate",
                           help="Cap the copy's bandwidth (with --partial)")
        return parser

    def get_epilog(self) -> str:
        return ""

    def before(self, parsed_args: argparse.Namespace) -> argparse.Namespace:
        if getattr(parsed_args, "partial", None) is None:
            for dest, flag in (("strategy", "--strategy"), ("max_rate", "--max-rate")):
                if getattr(parsed_args, dest, None) is not None:
                    raise exceptions.CommandError(f"{flag} needs --partial <source-host>")
            return parsed_args
        for dest, flag in NOVA_ONLY:
            if getattr(parsed_args, dest, None):
                raise exceptions.CommandError(f"--partial cannot be combined with {flag}")
        if parsed_args.max_rate is not None and parsed_args.max_rate <= 0:
            raise exceptions.CommandError("--max-rate must be positive")
        return parsed_args

    def after(self, parsed_args: argparse.Namespace, return_code: int) -> int:
        return return_code


def partial_migrate(app: Any, parsed_args: argparse.Namespace) -> None:
    """Start the partial migration; with ``--wait`` follow it to its end. Without
    ``--wait`` the operation's ID is printed (for ``server partial migration show``)."""
    op = common.client(app).partial_migration(
        common.server_id(app, parsed_args.server), parsed_args.partial,
        dest_host=parsed_args.host, strategy=parsed_args.strategy,
        max_rate_mb_s=parsed_args.max_rate)
    if parsed_args.wait:
        op = common.wait(app, op)
        app.stdout.write(f"Partial migration {op['id']} done: {op.get('source_host')} -> "
                         f"{op.get('dest_host')}\n")
    else:
        app.stdout.write(f"Partial migration {op['id']} accepted "
                         f"({op.get('state')})\n")
