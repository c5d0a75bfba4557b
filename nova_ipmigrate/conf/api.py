"""Options of the [api] group: ``ipmigrate-api``, the REST service."""

from __future__ import annotations

from oslo_config import cfg

api_group = cfg.OptGroup(
    name="api",
    title="REST API options",
    help="ipmigrate-api: the REST service (keystone service type memory-migration) "
    "that operators and the OpenStack client plugin use; it asks the engine over RPC.",
)

API_OPTS: list[cfg.Opt] = [
    cfg.HostAddressOpt("host", default="0.0.0.0",
                       help="Address ipmigrate-api listens on."),
    cfg.PortOpt("port", default=9890, help="Port ipmigrate-api listens on."),
    cfg.StrOpt("auth_strategy", default="keystone", choices=["keystone", "noauth2"],
               help="keystone: keystonemiddleware's auth_token ([keystone_authtoken]). "
               "noauth2 (tests, labs without keystone): the token is "
               "'<user>:<project>', and the user 'admin' has the admin role."),
    cfg.IntOpt("max_limit", default=1000, min=1,
               help="The most items a list returns in one page (and its default size)."),
    cfg.FloatOpt("engine_timeout", default=30.0, min=1.0,
                 help="Seconds an RPC call to the engine may take; past it the request "
                 "gets 503."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(api_group)
    conf.register_opts(API_OPTS, group=api_group)


def list_opts() -> list[tuple[str | cfg.OptGroup, list[cfg.Opt]]]:
    return [(api_group, API_OPTS)]
