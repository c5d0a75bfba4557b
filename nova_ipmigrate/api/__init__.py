"""``ipmigrate-api``: the REST service in front of the engine (``doc/api-ref.md``)."""
