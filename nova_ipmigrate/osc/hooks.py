"""``openstack server migrate --partial <host>``: a cliff command hook
(entry point namespace ``openstack.cli.server_migrate``) on OSC's own
``server migrate``.

The hook adds its options to the command's parser and wraps the command's
``take_action``: with ``--partial`` the request goes to the memory-migration
service (``--host`` is the optional destination, ``--wait`` follows it with a
progress bar); without it, ``server migrate`` is OSC's, untouched. The part on
the host moves whatever it is: a sub-host's pages (``partial_migration``), or the
main host's vCPUs, devices and resident pages (``main_host_migration``).
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
            "Move only the part of a split-memory server that sits on one host, so "
            "that the host can go into maintenance; the server keeps running. "
            "--host is the destination (default: the scheduler chooses); --wait "
            "shows the progress")
        group.add_argument("--partial", metavar="<source-host>",
                           help="Move the part of the server on this host: the pages it "
                                "holds as a sub-host or, if it is the main host, the "
                                "vCPUs, devices and resident pages")
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
    """Move the server's part on the ``--partial`` host: a sub-host's pages (a
    partial migration), or, when it is the server's main host, its vCPUs, devices
    and resident pages (a main-host migration, API 1.1). With ``--wait`` follow it
    to its end; without, print the operation's ID (``server partial migration
    show``)."""
    c = common.client(app)
    server = common.server_id(app, parsed_args.server)
    source = parsed_args.partial
    if c.memory(server)["main_host"] == source:
        label = "Main-host migration"
        if parsed_args.strategy is not None or parsed_args.max_rate is not None:
            raise exceptions.CommandError(
                f"{source} is the main host of {server}: its part moves as a main-host "
                "migration, which takes neither --strategy nor --max-rate")
        if c.api_version == "1.0":
            raise exceptions.CommandError(
                f"{source} is the main host of {server}: a main-host migration needs "
                "API version 1.1 (--os-ipmigrate-api-version 1.1)")
        op = c.server_action(server, "main_host_migration", {"dest_host": parsed_args.host})
    else:
        label = "Partial migration"
        op = c.partial_migration(server, source, dest_host=parsed_args.host,
                                 strategy=parsed_args.strategy,
                                 max_rate_mb_s=parsed_args.max_rate)
    if parsed_args.wait:
        op = common.wait(app, op)
        app.stdout.write(f"{label} {op['id']} done: {op.get('source_host') or source} -> "
                         f"{op.get('dest_host')}\n")
    else:
        app.stdout.write(f"{label} {op['id']} accepted ({op.get('state')})\n")
