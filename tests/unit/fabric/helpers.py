"""Shared helpers of the fabric tests: keys, connected pairs, throwaway certificates."""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from nova_ipmigrate.fabric import auth, wire
from nova_ipmigrate.fabric.auth import TlsConfig
from nova_ipmigrate.fabric.connection import Connection
from nova_ipmigrate.fabric.service import InMemoryPageService

KEY = auth.SharedKey(b"0123456789abcdef0123456789abcdef")
OTHER_KEY = auth.SharedKey(b"fedcba9876543210fedcba9876543210")
VM = uuid.UUID("00000000-0000-4000-8000-000000000001")
_T = TypeVar("_T")


def connection_pair() -> tuple[Connection, Connection]:
    """Two connected Connections over a socketpair (client end, server end)."""
    left, right = socket.socketpair()
    return Connection(left, "client"), Connection(right, "server")


def authenticated_pair() -> tuple[Connection, Connection]:
    client, server = connection_pair()
    in_thread(lambda: auth.server_handshake(server, "host-b", KEY),
              lambda: auth.client_handshake(client, "host-a", "host-b", KEY))
    return client, server


def in_thread(background: Callable[[], object],
              foreground: Callable[[], _T]) -> _T:
    """Run ``background`` in a thread while ``foreground`` runs here; re-raise its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            background()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        return foreground()
    finally:
        thread.join(10)
        if errors:
            raise errors[0]


def send_raw(conn: Connection, raw: bytes) -> None:
    conn.sock.sendall(raw)


class RecordingService(InMemoryPageService):
    """An in-memory service that records every call, to prove what was (not) applied."""

    def __init__(self, capacity_pages: int | None = None) -> None:
        super().__init__(capacity_pages)
        self.calls: list[tuple[str, uuid.UUID, list[int]]] = []

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[wire.Buffer | None]:
        self.calls.append(("get", vm, list(pages)))
        return super().get_pages(vm, pages)

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[wire.Buffer]) -> None:
        self.calls.append(("put", vm, list(pages)))
        super().put_pages(vm, pages, data)

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        self.calls.append(("drop", vm, list(pages)))
        super().drop_pages(vm, pages)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ec_key_request(cwd: Path, name: str, subject: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)


def make_ca(directory: Path, name: str = "ca") -> Path:
    """A throwaway CA (openssl CLI); returns its certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", f"/CN=fabric test {name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return directory / f"{name}.pem"


def make_host_cert(directory: Path, host: str, ca: Path, san: str | None = None) -> TlsConfig:
    """A certificate for ``host`` (its SAN, unless ``san`` says otherwise) signed by ``ca``."""
    ext = directory / f"{host}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        f"subjectAltName=DNS:{san or host}\n")
    _ec_key_request(directory, host, f"/CN={san or host}")
    ca_key = ca.with_suffix(".key")
    _openssl("x509", "-req", "-in", f"{host}.csr", "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "1", "-out", f"{host}.pem", "-extfile", ext.name,
             cwd=directory)
    return TlsConfig(str(directory / f"{host}.pem"), str(directory / f"{host}.key"), str(ca))
