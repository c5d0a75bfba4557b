"""The engine's Nova backend: placement accounting of split-memory instances'
parts, destinations chosen by Nova's scheduler, Nova's maintenance notifications.

Placement model: a part of an instance's memory on a host is MEMORY_MB of the
instance's own consumer on that host's compute-node resource provider (the main
host also holds the instance's VCPU, DISK_GB and its resident part). Amounts are
*entitlements*: the main host's ``ipmigrate:resident_mb`` and the sub-hosts' shares
of the rest, not the pages resident at a given moment (those go back and forth by
paging within the entitlement). See ``doc/nova-integration.md``.
"""
