"""``ipmigrate-engine``: the control-plane engine of split-memory instances.

``ipmigrate-engine [--config-file ...] [serve]`` runs the RPC server (topic
``ipmigrate-engine``, threading executor) and the worker until SIGTERM/SIGINT;
``ipmigrate-engine db sync`` creates or upgrades the database (``[database]
connection``, default ``sqlite:///$state_path/engine.sqlite``), like
``nova-manage db sync``; ``ipmigrate-engine db version`` prints its revision.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from nova_ipmigrate import conf, rpc
from nova_ipmigrate.cmd.daemon import serve
from nova_ipmigrate.engine.db import Database, NotSynced

CONF = conf.CONF
COMMANDS = ("serve", "db")


def _add_parsers(subparsers: Any) -> None:
    subparsers.add_parser("serve", help="run the engine (the default)")
    db = subparsers.add_parser("db", help="the engine database")
    actions = db.add_subparsers(dest="action")
    actions.required = True
    sync = actions.add_parser("sync", help="create or upgrade the schema")
    sync.add_argument("revision", nargs="?", default="head")
    actions.add_parser("version", help="print the schema revision")


_COMMAND_OPT = cfg.SubCommandOpt("command", title="commands", handler=_add_parsers)


def _database() -> Database:
    return Database(CONF.database.connection, CONF.database)


def db_command() -> int:
    db = _database()
    try:
        if CONF.command.action == "sync":
            db.sync(CONF.command.revision)
            print(f"engine database at revision {db.current_revision()}")
        else:
            print(db.current_revision() or "none")
    finally:
        db.close()
    return 0


def run_engine() -> int:
    from nova_ipmigrate.agent.rpcapi import AgentAPI
    from nova_ipmigrate.engine.service import EngineService

    rpc.init(CONF)
    transport = rpc.get_transport()
    notifier = rpc.NOTIFIER
    service = EngineService(CONF, transport, AgentAPI(CONF, transport=transport), notifier=notifier)
    service.db.check_synced()
    done = threading.Event()

    def start() -> str:
        service.start()
        return (f"engine {service.host} ready (topic ipmigrate-engine, hosts "
                f"{', '.join(CONF.engine.hosts) or 'none'})")

    def stop() -> None:
        service.stop()
        rpc.cleanup()

    return serve("ipmigrate-engine", start, stop, done)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in COMMANDS for a in args):
        args.append("serve")
    logging.register_options(CONF)
    rpc.register_opts(CONF)
    if "command" not in CONF:
        CONF.register_cli_opt(_COMMAND_OPT)
    try:
        CONF(args, project="nova-ipmigrate")
        logging.setup(CONF, "nova-ipmigrate")
        if CONF.command.name == "db":
            return db_command()
        return run_engine()
    except (cfg.Error, OSError, ValueError, NotSynced) as exc:
        print(f"ipmigrate-engine: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
