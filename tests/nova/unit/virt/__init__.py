"""Tests of nova_ipmigrate.virt: the compute driver, its alias, the extra specs."""
