"""Options of the [fabric] group: the authenticated TCP page transport between hosts."""

from __future__ import annotations

from oslo_config import cfg

from nova_ipmigrate.conf import paths

fabric_group = cfg.OptGroup(
    name="fabric",
    title="fabric options",
    help="The host-to-host page transport of the nova-ipmigrate agents: page-ins, "
    "page-outs and bulk migration streams. Guest memory crosses it, so every peer "
    "is authenticated with a shared key, and optionally with mutual TLS.",
)

FABRIC_OPTS: list[cfg.Opt] = [
    cfg.HostAddressOpt(
        "listen_address",
        default="0.0.0.0",
        help="Address the fabric server listens on. Use the address of the network "
        "that carries migration traffic; '::' listens on IPv6 and IPv4.",
    ),
    cfg.PortOpt(
        "port",
        default=47800,
        help="TCP port of the fabric server; the same on every host.",
    ),
    cfg.StrOpt(
        "key_file",
        default=paths.state_path_def("fabric.key"),
        help="File holding the secret shared by every host of the deployment (at least "
        "32 bytes, e.g. 'openssl rand -hex 32'). It must be readable by its owner only. "
        "Peers prove knowledge of it with an HMAC-SHA256 challenge-response; it is never "
        "sent or logged.",
    ),
    cfg.BoolOpt(
        "tls_enabled",
        default=False,
        help="Also run the fabric over mutual TLS (1.3): pages are then encrypted, and "
        "each host's certificate must name the host. The shared-key check still runs.",
    ),
    cfg.StrOpt(
        "tls_cert_file",
        help="This host's certificate (PEM); its subjectAltName (or CN) must be the "
        "host name peers know it by. Required if tls_enabled.",
    ),
    cfg.StrOpt(
        "tls_key_file",
        help="Private key (PEM) of tls_cert_file. Required if tls_enabled.",
    ),
    cfg.StrOpt(
        "tls_ca_file",
        help="CA certificate(s) (PEM) that sign every host's fabric certificate. "
        "Required if tls_enabled.",
    ),
    cfg.IntOpt(
        "streams",
        default=4,
        min=1,
        max=64,
        help="Parallel TCP connections a bulk transfer (migration, reintegration) uses "
        "to one peer.",
    ),
    cfg.IntOpt(
        "batch_pages",
        default=256,
        min=1,
        max=4096,
        help="Pages per message of a bulk transfer (256 pages: 1 MiB).",
    ),
    cfg.FloatOpt(
        "connect_timeout",
        default=5.0,
        min=0.1,
        help="Seconds to connect to a peer and authenticate.",
    ),
    cfg.FloatOpt(
        "request_timeout",
        default=10.0,
        min=0.1,
        help="Seconds a peer may take to answer one request before the connection is "
        "given up.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(fabric_group)
    conf.register_opts(FABRIC_OPTS, group=fabric_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(fabric_group, FABRIC_OPTS)]
