"""Peer authentication of the fabric: who may read and write a host's guest pages.

Default: a shared secret (the key file named by ``[fabric] key_file``) and a
mutual HMAC-SHA256 challenge-response on every connection:

1. client -> HELLO: client nonce ``cn``, client host name ``C``;
2. server -> CHALLENGE: server nonce ``sn``, ``MAC(key, "server", cn, sn, C, S)``,
   server host name ``S``;
3. client checks that ``S`` is the peer it meant to reach and the MAC, then
   -> AUTH: ``MAC(key, "client", cn, sn, C, S)``;
4. server checks it (constant time) -> AUTH_OK, or ERROR AUTH_FAILED and close.

Each side proves the key over a nonce the other chose fresh, so a recorded
handshake cannot be replayed. The role label and both host names are in the
MACs, and a host never accepts its own name as the peer's, so a handshake
reflected back at the host that started it fails.

The HMAC exchange authenticates peers; it does not encrypt or protect the
pages that follow. Optional mutual TLS (:class:`TlsConfig`) adds that, with a
per-host certificate checked against the expected host name on both ends; the
HMAC exchange still runs inside it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova_ipmigrate.fabric import wire
from nova_ipmigrate.fabric.connection import Connection
from nova_ipmigrate.fabric.errors import (
    ErrorCode,
    FabricAuthError,
    FabricConfigError,
    FabricError,
    FabricProtocolError,
    remote_error,
)

#: Shortest accepted key (after stripping whitespace): 32 bytes, 128 bits as hex.
MIN_KEY_BYTES = 32
_DOMAIN = b"nova-ipmigrate fabric v1"


class SharedKey:
    """The fabric's shared secret. Its repr never shows the secret, so logs cannot."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise FabricConfigError(
                f"fabric key too short: at least {MIN_KEY_BYTES} bytes are needed")
        self._secret = secret

    def __repr__(self) -> str:
        return "<SharedKey>"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SharedKey:
        """Read a key file; it must not be accessible to group or others."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise FabricConfigError(f"cannot read fabric key file {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FabricConfigError(
                f"fabric key file {path} is accessible to group or others "
                f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
        return cls(secret)

    def mac(self, role: bytes, client_nonce: bytes, server_nonce: bytes, client_name: str,
            server_name: str) -> bytes:
        mac = hmac.new(self._secret, _DOMAIN, hashlib.sha256)
        # Length-prefixed fields: no two different transcripts share an encoding.
        for field in (role, client_nonce, server_nonce, client_name.encode(),
                      server_name.encode()):
            mac.update(len(field).to_bytes(2, "little"))
            mac.update(field)
        return mac.digest()


def generate_key_file(path: str | os.PathLike[str]) -> None:
    """Write a new random key, readable by its owner only; never overwrites one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as key_file:
        key_file.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")


# -- the HMAC handshake -------------------------------------------------------------------


def _expect(conn: Connection, type_: wire.MessageType) -> wire.Frame:
    """The next frame, which must be ``type_``; an ERROR becomes the peer's refusal."""
    frame = conn.receive()
    if frame.header.type is wire.MessageType.ERROR:
        code, pages, message = wire.decode_error(frame.header, frame.payload)
        conn.close()
        error = remote_error(code, message, pages)
        if isinstance(error, FabricAuthError):
            raise error
        raise FabricAuthError(f"{conn.peer} refused the handshake: {message}")
    if frame.header.type is not type_:
        conn.close()
        raise FabricProtocolError(
            f"{conn.peer} sent {frame.header.type.name} during the handshake, "
            f"expected {type_.name}")
    return frame


def _refuse(conn: Connection, reason: str) -> FabricAuthError:
    """Tell the peer (without detail) that it failed, close, and build the local error."""
    try:
        conn.send(wire.encode_error(0, wire.NO_VM, ErrorCode.AUTH_FAILED,
                                    "authentication failed"))
    except FabricError:  # the peer may be gone already; we close anyway
        pass
    conn.close()
    return FabricAuthError(reason)


def client_handshake(conn: Connection, host_name: str, peer_name: str,
                     key: SharedKey) -> None:
    """Authenticate ``conn`` (we connected) to ``peer_name``; raises FabricAuthError."""
    if host_name == peer_name:
        raise FabricAuthError(f"refusing to authenticate to our own name {host_name!r}")
    client_nonce = secrets.token_bytes(wire.NONCE_SIZE)
    conn.send(wire.encode_hello(client_nonce, host_name))
    frame = _expect(conn, wire.MessageType.CHALLENGE)
    server_nonce, server_mac, server_name = wire.decode_challenge(frame.payload)
    if server_name != peer_name:
        raise _refuse(conn, f"{conn.peer} says it is {server_name!r}, expected {peer_name!r}")
    expected = key.mac(b"server", client_nonce, server_nonce, host_name, server_name)
    if not hmac.compare_digest(server_mac, expected):
        raise _refuse(conn, f"{peer_name} ({conn.peer}) failed to prove the fabric key "
                            f"(the key files differ)")
    conn.send(wire.encode_auth(
        key.mac(b"client", client_nonce, server_nonce, host_name, server_name)))
    _expect(conn, wire.MessageType.AUTH_OK)
    conn.peer = peer_name
    conn.authenticated = True


def server_handshake(conn: Connection, host_name: str, key: SharedKey) -> str:
    """Authenticate the client of ``conn``; returns its host name, raises FabricAuthError."""
    frame = _expect(conn, wire.MessageType.HELLO)
    client_nonce, client_name = wire.decode_hello(frame.payload)
    if client_name == host_name:
        raise _refuse(conn, f"{conn.peer} claims our own name {host_name!r}")
    if isinstance(conn.sock, ssl.SSLSocket):
        try:
            check_peer_certificate(conn.sock, client_name)
        except FabricAuthError as exc:
            raise _refuse(conn, str(exc)) from None
    server_nonce = secrets.token_bytes(wire.NONCE_SIZE)
    conn.send(wire.encode_challenge(
        server_nonce, key.mac(b"server", client_nonce, server_nonce, client_name, host_name),
        host_name))
    frame = _expect(conn, wire.MessageType.AUTH)
    expected = key.mac(b"client", client_nonce, server_nonce, client_name, host_name)
    if not hmac.compare_digest(bytes(frame.payload), expected):
        raise _refuse(conn, f"{client_name!r} ({conn.peer}) failed to prove the fabric key")
    conn.send(wire.encode_empty(wire.MessageType.AUTH_OK))
    conn.peer = client_name
    conn.authenticated = True
    return client_name


# -- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig:
    """This host's certificate and key, and the CA that signs every host's certificate."""

    cert_file: str
    key_file: str
    ca_file: str

    @classmethod
    def from_conf(cls, group: Any) -> TlsConfig | None:
        """From the ``[fabric]`` options; None unless ``tls_enabled``."""
        if not group.tls_enabled:
            return None
        missing = [f"[fabric] {name}" for name in ("tls_cert_file", "tls_key_file",
                                                   "tls_ca_file")
                   if not getattr(group, name)]
        if missing:
            raise FabricConfigError(f"tls_enabled needs {', '.join(missing)}")
        return cls(group.tls_cert_file, group.tls_key_file, group.tls_ca_file)

    def _context(self, server_side: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side
                                 else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            context.load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise FabricConfigError(f"cannot load fabric TLS files: {exc}") from exc
        return context

    def server_context(self) -> ssl.SSLContext:
        """Requires a client certificate; its name is checked against HELLO's."""
        return self._context(server_side=True)

    def client_context(self) -> ssl.SSLContext:
        """Checks the server certificate against the peer's host name (check_hostname)."""
        return self._context(server_side=False)


def certificate_names(cert: Mapping[str, Any]) -> list[str]:
    """DNS and IP subjectAltNames of a verified certificate, else its commonName."""
    names = [str(value) for kind, value in cert.get("subjectAltName", ())
             if kind in ("DNS", "IP Address")]
    if names:
        return names
    return [str(value) for rdn in cert.get("subject", ()) for key, value in rdn
            if key == "commonName"]


def check_peer_certificate(sock: ssl.SSLSocket, expected_name: str) -> None:
    """The peer's (verified) certificate must name ``expected_name`` exactly."""
    cert = sock.getpeercert()
    if not cert:
        raise FabricAuthError("peer presented no certificate")
    names = certificate_names(cert)
    if expected_name.lower() not in (name.lower() for name in names):
        raise FabricAuthError(
            f"peer certificate is for {', '.join(names) or 'no name'}, "
            f"not {expected_name!r}")
