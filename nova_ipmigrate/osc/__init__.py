"""OpenStackClient plugin: ``openstack server migrate --partial`` and the
``openstack server reintegrate|split|memory|partial migration`` and
``openstack compute host drain`` commands, over the ``memory-migration`` API."""
