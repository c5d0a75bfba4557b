"""The OpenStackClient plugin module (entry point ``openstack.cli.extension``):
the ``ipmigrate`` client of the ``memory-migration`` service, its API version option
``--os-ipmigrate-api-version`` (``OS_IPMIGRATE_API_VERSION``), and the command group
``openstack.ipmigrate.v1``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from nova_ipmigrate.osc.client import SERVICE_TYPE, Client

LOG = logging.getLogger(__name__)

API_NAME = "ipmigrate"
API_VERSION_OPTION = "os_ipmigrate_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = {"1": "nova_ipmigrate.osc.client.Client",
                "1.0": "nova_ipmigrate.osc.client.Client",
                "1.1": "nova_ipmigrate.osc.client.Client"}


def make_client(instance: Any) -> Client:
    """The client, built from OSC's ClientManager (its session and catalog)."""
    version = str(instance._api_version[API_NAME])
    endpoint = instance.get_endpoint_for_service_type(
        SERVICE_TYPE, region_name=instance.region_name, interface=instance.interface)
    LOG.debug("ipmigrate client: endpoint %s, API version %s", endpoint, version)
    return Client(instance.session, endpoint, api_version=version)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from osc_lib import utils

    parser.add_argument(
        "--os-ipmigrate-api-version", metavar="<ipmigrate-api-version>",
        default=utils.env("OS_IPMIGRATE_API_VERSION"),
        help=f"memory-migration API version, default={DEFAULT_API_VERSION} (the newest "
             "this client knows) (Env: OS_IPMIGRATE_API_VERSION)")
    return parser
