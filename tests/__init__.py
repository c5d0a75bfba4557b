# Before any test module imports oslo_messaging: nova_ipmigrate selects oslo.service's
# threading backend (the first import of oslo_messaging would settle on eventlet).
import nova_ipmigrate  # noqa: F401
