"""Tests that import Nova (the driver subclass, the scheduler plug-ins, placement
accounting, and the functional tests on Nova's own fixtures).

They run in their own pytest process (``pytest tests/nova``), in Nova's native
threading mode: Nova refuses an eventlet imported before it decides, so the
concurrency mode is settled here, before anything imports oslo.messaging.
"""

import os

os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")

from nova import monkey_patch  # noqa: E402

monkey_patch.patch(backend="threading")
