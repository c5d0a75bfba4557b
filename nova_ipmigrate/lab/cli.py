"""The ``openstack`` CLI (python-openstackclient with this package's plugin, from
the running interpreter's environment) against the lab's ``ipmigrate-api``.

The lab's API runs ``noauth2``, so the CLI authenticates the way one talks to a
service without keystone: ``--os-auth-type admin_token --os-token <user>:<project>
--os-endpoint <url>``; the user ``admin`` is the cloud admin, any other is not.
Every command is logged (``$ openstack ...``), and so is its stderr as it comes
(``--wait``'s progress bar), so the demo shows what an operator would see.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN = "admin:admin"


class CLIError(RuntimeError):
    """``openstack`` is missing, or a command did not end as expected."""


@dataclass
class CLIResult:
    args: list[str]
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except ValueError as exc:
            raise CLIError(f"openstack {shlex.join(self.args)}: not JSON: {self.out!r}"
                           ) from exc

    @property
    def progress(self) -> list[str]:
        """The progress bar's lines on stderr (``[###...] 42.0% ...``)."""
        return [line for line in self.err.splitlines() if line.startswith("[")]


def executable() -> Path:
    exe = Path(sys.executable).parent / "openstack"
    if not exe.exists():
        raise CLIError(f"{exe} is missing: install the client extra "
                       "(pip install 'nova-ipmigrate[client]')")
    return exe


class OpenStackCLI:
    def __init__(self, url: str, token: str = ADMIN,
                 log: Callable[[str], None] | None = None, timeout: float = 600.0) -> None:
        self.url = url
        self.token = token
        self.log = log or (lambda line: print(line, flush=True))
        self.timeout = timeout
        self.exe = executable()
        #: every command run, in order
        self.history: list[CLIResult] = []

    def env(self) -> dict[str, str]:
        # nothing from the caller's cloud (OS_CLOUD, OS_AUTH_URL...) leaks in
        return {k: v for k, v in os.environ.items() if not k.startswith("OS_")}

    def run(self, *args: str, token: str | None = None, check: bool = True,
            timeout: float | None = None) -> CLIResult:
        """Run ``openstack <args>``; with ``check`` a non-zero exit is a CLIError."""
        tok = token or self.token
        who = "" if tok == self.token else f"  (as {tok.split(':')[0]})"
        self.log(f"$ openstack {shlex.join(args)}{who}")
        cmd = [str(self.exe), "--os-auth-type", "admin_token", "--os-token", tok,
               "--os-endpoint", self.url, *args]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(),
                                start_new_session=True)
        err_lines: list[str] = []
        out_chunks: list[str] = []

        def relay() -> None:       # stderr as it comes: the progress bar
            assert proc.stderr is not None
            for line in proc.stderr:
                err_lines.append(line)
                self.log(f"  | {line.rstrip()}")

        def collect() -> None:
            assert proc.stdout is not None
            out_chunks.append(proc.stdout.read())

        readers = [threading.Thread(target=relay, daemon=True),
                   threading.Thread(target=collect, daemon=True)]
        for t in readers:
            t.start()
        limit = timeout or self.timeout
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CLIError(f"openstack {shlex.join(args)}: no answer in {limit:.0f}s"
                           ) from None
        finally:
            for t in readers:
                t.join(10)
        out = "".join(out_chunks)
        res = CLIResult(list(args), proc.returncode, out, "".join(err_lines))
        self.history.append(res)
        for line in out.splitlines():
            self.log(f"  {line}")
        if check and res.rc != 0:
            raise CLIError(f"openstack {shlex.join(args)} exited {res.rc}: {res.err.strip()}")
        return res

    def json(self, *args: str, **kw: Any) -> Any:
        return self.run(*args, "-f", "json", **kw).json()
