"""The real ``openstack`` shell (python-openstackclient, in this process) with this
package's plugin, against the real ``ipmigrate-api`` WSGI app served on a loopback
port with a fake engine (``served``: ``tests/unit/api/served.py``; ``noauth2``: the
token is ``user:project``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.unit.api.served import Served


class Result:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def osc(served: Served, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Any:
    """``osc("server", "memory", "show", VM, token="demo:demo")``: the shell's exit
    status, stdout and stderr."""
    import os

    from openstackclient import shell

    for k in list(os.environ):
        if k.startswith("OS_"):
            monkeypatch.delenv(k)

    from openstackclient.common import clientmanager

    def run(*args: str, token: str = "admin:admin") -> Result:
        # OSC caches a plugin's client on the ClientManager class, for the life of
        # the process: one command per process in real use, several here.
        for cls in clientmanager.ClientManager.__mro__:
            if "ipmigrate" in vars(cls):
                vars(cls)["ipmigrate"]._handle = None
        # the shell adds logging handlers on this run's (captured) stderr: they go
        # with it, not into the next test's
        handlers = {name: list(logging.getLogger(name).handlers)
                    for name in ("", *logging.root.manager.loggerDict)}
        capsys.readouterr()
        try:
            rc = shell.main(["--os-auth-type", "admin_token", "--os-token", token,
                             "--os-endpoint", served.url, *args])
        except SystemExit as exc:       # argparse's usage errors
            rc = int(exc.code or 0)
        finally:
            for name in ("", *logging.root.manager.loggerDict):
                logging.getLogger(name).handlers[:] = handlers.get(name, [])
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run


@pytest.fixture
def progressing(served: Served, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``progressing("done", fault=None)``: from now on, any operation the fake engine
    is asked about runs 30%, 70%, then ends in that state (``--wait`` polls fast)."""
    from nova_ipmigrate.osc.v1 import common
    from tests.unit.api.test_app import _op

    monkeypatch.setattr(common, "POLL_INTERVAL", 0.01)

    def arm(final: str = "done", fault: str | None = None) -> list[str]:
        polled: list[str] = []

        def show(ctxt: Any, op_id: str) -> dict[str, Any]:
            polled.append(op_id)
            n = polled.count(op_id)
            served.engine._rec("show_operation", op_id)
            if n <= 2:
                return _op(0, id=op_id, state="running",
                           progress={"pages_done": 30 * n + 10 * (n - 1),
                                     "pages_total": 100, "bytes_done": 4096 * 30 * n})
            return _op(0, id=op_id, state=final, fault=fault,
                       progress={"pages_done": 100, "pages_total": 100})

        monkeypatch.setattr(served.engine, "show_operation", show)
        return polled

    return arm
