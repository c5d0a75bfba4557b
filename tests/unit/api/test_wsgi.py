"""``nova_ipmigrate.api.wsgi:application``, the uwsgi entry point, in a process of its
own (it reads the global configuration): configured from IPMIGRATE_CONFIG_FILES on
its first request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from wsgiref.util import setup_testing_defaults
from nova_ipmigrate.api import wsgi
out = []
for path, token in (("/", None), ("/v1/operations", None), ("/v1/nope", "admin:admin")):
    env = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    if token:
        env["HTTP_X_AUTH_TOKEN"] = token
    setup_testing_defaults(env)
    status = []
    body = b"".join(wsgi.application(env, lambda s, h, *a: status.append(s)))
    out.append([status[0], json.loads(body)])
print(json.dumps(out))
"""


def test_the_first_request_reads_the_config_files(tmp_path: Path) -> None:
    cfg = tmp_path / "api.conf"
    cfg.write_text("[DEFAULT]\ntransport_url = fake:/\n[api]\nauth_strategy = noauth2\n")
    env = {**os.environ, "IPMIGRATE_CONFIG_FILES": f" {cfg} ,"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    (root, anon, missing) = json.loads(out.stdout.strip().splitlines()[-1])
    assert root[0].startswith("200") and root[1]["versions"][0]["id"] == "v1"
    assert anon[0].startswith("401")          # noauth2 from the file: a token is needed
    assert missing[0].startswith("404")
    assert missing[1]["errors"][0]["code"] == "ipmigrate.not_found"
