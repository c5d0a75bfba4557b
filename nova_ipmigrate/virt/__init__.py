"""The compute side of the Nova integration: the libvirt driver subclass
(``compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver`` through the
``nova.virt.ipmigrate`` alias), the flavor extra specs of split-memory instances."""
