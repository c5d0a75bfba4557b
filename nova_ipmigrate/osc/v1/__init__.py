"""The commands of API version 1 (``openstack.ipmigrate.v1``)."""
