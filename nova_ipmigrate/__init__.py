"""nova-ipmigrate: split and partial live migration of VM memory for OpenStack Nova."""

# No eventlet in nova-ipmigrate: oslo.messaging's servers (through oslo.service) use
# the threading backend, unless the embedding process (nova-compute) chose one.
try:
    from oslo_service import backend as _service_backend
except ImportError:  # pragma: no cover - oslo.service comes with oslo.messaging
    pass
else:
    if hasattr(_service_backend, "register_backend_default_hook"):
        _service_backend.register_backend_default_hook(
            lambda: _service_backend.BackendType.THREADING)
