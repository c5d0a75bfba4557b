"""The API's policy rules (oslo.policy namespace ``nova-ipmigrate``): admin only by
default. ``oslopolicy-sample-generator --namespace nova-ipmigrate`` writes the sample."""

from __future__ import annotations

from oslo_config import cfg
from oslo_policy import policy

ADMIN = "role:admin"

RULES = [
    policy.DocumentedRuleDefault(
        name="ipmigrate:server:action", check_str=ADMIN,
        description="Request an operation on a server: partial migration, "
        "reintegration, split migration, main-host migration.",
        operations=[{"path": "/v1/servers/{server_id}/action", "method": "POST"}]),
    policy.DocumentedRuleDefault(
        name="ipmigrate:server:memory:show", check_str=ADMIN,
        description="Show where a split server's memory is (bytes per host).",
        operations=[{"path": "/v1/servers/{server_id}/memory", "method": "GET"}]),
    policy.DocumentedRuleDefault(
        name="ipmigrate:operation:list", check_str=ADMIN,
        description="List operations.",
        operations=[{"path": "/v1/operations", "method": "GET"}]),
    policy.DocumentedRuleDefault(
        name="ipmigrate:operation:show", check_str=ADMIN,
        description="Show an operation and its progress.",
        operations=[{"path": "/v1/operations/{operation_id}", "method": "GET"}]),
    policy.DocumentedRuleDefault(
        name="ipmigrate:operation:abort", check_str=ADMIN,
        description="Abort an operation.",
        operations=[{"path": "/v1/operations/{operation_id}/abort", "method": "POST"}]),
    policy.DocumentedRuleDefault(
        name="ipmigrate:host:drain", check_str=ADMIN,
        description="Move every part of every split server off a host.",
        operations=[{"path": "/v1/hosts/{host}/drain", "method": "POST"}]),
]


def list_rules() -> list[policy.RuleDefault]:
    return list(RULES)


def enforcer(conf: cfg.ConfigOpts) -> policy.Enforcer:
    e = policy.Enforcer(conf)
    e.register_defaults(RULES)
    return e
