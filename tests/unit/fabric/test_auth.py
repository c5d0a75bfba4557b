"""Tests of nova_ipmigrate.fabric.auth: the HMAC handshake, key files, certificate names."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from nova_ipmigrate.fabric import auth, wire
from nova_ipmigrate.fabric.connection import Connection
from nova_ipmigrate.fabric.errors import (
    ErrorCode,
    FabricAuthError,
    FabricConfigError,
    FabricProtocolError,
)
from tests.unit.fabric.helpers import (
    KEY,
    OTHER_KEY,
    VM,
    connection_pair,
    in_thread,
    make_ca,
    make_host_cert,
)

T = wire.MessageType


def test_right_key_authenticates_both_ends() -> None:
    client, server = connection_pair()
    name = in_thread(lambda: auth.client_handshake(client, "host-a", "host-b", KEY),
                     lambda: auth.server_handshake(server, "host-b", KEY))
    assert name == "host-a"
    assert client.authenticated and server.authenticated
    assert (client.peer, server.peer) == ("host-b", "host-a")


def handshake_errors(client_key: auth.SharedKey, server_key: auth.SharedKey,
                     peer_name: str = "host-b") -> tuple[BaseException | None,
                                                         BaseException | None]:
    """Run both ends of a handshake; the exception each end raised (None: success)."""
    client, server = connection_pair()
    results: dict[str, BaseException | None] = {}

    def run(side: str, step: Callable[[], object]) -> None:
        try:
            step()
            results[side] = None
        except BaseException as exc:  # inspected by the test
            results[side] = exc

    thread = threading.Thread(target=run, args=(
        "server", lambda: auth.server_handshake(server, "host-b", server_key)))
    thread.start()
    run("client", lambda: auth.client_handshake(client, "host-a", peer_name, client_key))
    thread.join(5)
    assert not client.authenticated or results["client"] is None
    assert not server.authenticated or results["server"] is None
    return results["client"], results["server"]


def test_wrong_key_on_client_is_refused_by_both() -> None:
    client_error, server_error = handshake_errors(OTHER_KEY, KEY)
    assert isinstance(client_error, FabricAuthError)
    assert "host-b (client) failed to prove the fabric key" in str(client_error)
    assert isinstance(server_error, FabricAuthError)


def test_wrong_key_on_server_is_refused_by_both() -> None:
    # The client checks the server's proof first: it never sends a MAC of its own.
    client_error, server_error = handshake_errors(KEY, OTHER_KEY)
    assert isinstance(client_error, FabricAuthError)
    assert "failed to prove the fabric key" in str(client_error)
    assert isinstance(server_error, FabricAuthError)
    assert "refused" in str(server_error)


def test_client_refuses_unexpected_server_name() -> None:
    client_error, server_error = handshake_errors(KEY, KEY, peer_name="host-c")
    assert isinstance(client_error, FabricAuthError)
    assert "says it is 'host-b', expected 'host-c'" in str(client_error)
    assert isinstance(server_error, FabricAuthError)


def test_server_refuses_its_own_name() -> None:
    client, server = connection_pair()
    client.send(wire.encode_hello(os.urandom(32), "host-b"))
    with pytest.raises(FabricAuthError, match="our own name"):
        auth.server_handshake(server, "host-b", KEY)
    reply = client.receive()
    assert reply.header.type is T.ERROR
    assert wire.decode_error(reply.header, reply.payload)[0] == ErrorCode.AUTH_FAILED


def test_client_refuses_to_talk_to_itself() -> None:
    client, _ = connection_pair()
    with pytest.raises(FabricAuthError, match="our own name"):
        auth.client_handshake(client, "host-a", "host-a", KEY)


def _start_server(name: str = "host-b") -> tuple[Connection, threading.Thread,
                                                 list[BaseException]]:
    client, server = connection_pair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            auth.server_handshake(server, name, KEY)
        except BaseException as exc:  # inspected by the test
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return client, thread, errors


def test_replayed_auth_fails() -> None:
    # Record a good handshake from host-a...
    client, thread, errors = _start_server()
    nonce = os.urandom(32)
    client.send(wire.encode_hello(nonce, "host-a"))
    challenge = wire.decode_challenge(client.receive().payload)
    good = KEY.mac(b"client", nonce, challenge[0], "host-a", "host-b")
    client.send(wire.encode_auth(good))
    assert client.receive().header.type is T.AUTH_OK
    thread.join(5)
    assert not errors
    # ...and replay its HELLO and AUTH without the key: the server's nonce is new.
    replay, thread, errors = _start_server()
    replay.send(wire.encode_hello(nonce, "host-a"))
    replay.receive()
    replay.send(wire.encode_auth(good))
    assert replay.receive().header.type is T.ERROR
    thread.join(5)
    assert isinstance(errors[0], FabricAuthError)


def test_reflected_server_proof_fails() -> None:
    # An attacker without the key sends the server's own MAC back as its AUTH.
    client, thread, errors = _start_server()
    client.send(wire.encode_hello(os.urandom(32), "host-a"))
    _, server_mac, _ = wire.decode_challenge(client.receive().payload)
    client.send(wire.encode_auth(server_mac))
    assert client.receive().header.type is T.ERROR
    thread.join(5)
    assert isinstance(errors[0], FabricAuthError)


def test_reflected_handshake_between_two_servers_fails() -> None:
    # The attacker starts handshakes with host-b's server, claiming to be host-c, and
    # tries to make the server answer its own challenge in a second session. The roles
    # and both names are in the MACs, so no answer fits.
    first, first_thread, first_errors = _start_server()
    second, second_thread, _ = _start_server()
    first.send(wire.encode_hello(os.urandom(32), "host-c"))
    sn1, _, _ = wire.decode_challenge(first.receive().payload)
    second.send(wire.encode_hello(sn1, "host-c"))  # the first server's nonce as ours
    _, mac2, _ = wire.decode_challenge(second.receive().payload)
    first.send(wire.encode_auth(mac2))
    assert first.receive().header.type is T.ERROR
    first_thread.join(5)
    assert isinstance(first_errors[0], FabricAuthError)
    second.close()
    second_thread.join(5)


def test_requests_before_authentication_are_protocol_errors() -> None:
    client, thread, errors = _start_server()
    client.send(wire.encode_page_list(T.GET_PAGES, 1, VM, [1]))
    thread.join(5)
    assert isinstance(errors[0], FabricProtocolError)
    assert "before authentication" in str(errors[0])


def test_truncated_handshake() -> None:
    client, thread, errors = _start_server()
    raw = b"".join(bytes(part) for part in wire.encode_hello(os.urandom(32), "host-a"))
    client.sock.sendall(raw[:50])
    client.close()
    thread.join(5)
    assert isinstance(errors[0], FabricProtocolError)


def test_handshake_out_of_order() -> None:
    client, thread, errors = _start_server()
    client.send(wire.encode_auth(os.urandom(32)))
    thread.join(5)
    assert isinstance(errors[0], FabricProtocolError)
    assert "expected HELLO" in str(errors[0])


def test_mac_binds_every_field() -> None:
    fields = (b"client", b"n" * 32, b"s" * 32, "host-a", "host-b")
    changed = [
        (b"server", b"n" * 32, b"s" * 32, "host-a", "host-b"),
        (b"client", b"N" * 32, b"s" * 32, "host-a", "host-b"),
        (b"client", b"n" * 32, b"S" * 32, "host-a", "host-b"),
        (b"client", b"n" * 32, b"s" * 32, "host-x", "host-b"),
        (b"client", b"n" * 32, b"s" * 32, "host-a", "host-x"),
        # A byte moved from one field to the next.
        (b"client", b"n" * 32, b"s" * 32, "host-ah", "ost-b"),
        (b"client", b"n" * 31, b"n" + b"s" * 32, "host-a", "host-b"),
    ]
    macs = {KEY.mac(*fields), *(KEY.mac(*other) for other in changed)}
    assert len(macs) == len(changed) + 1


# -- keys ---------------------------------------------------------------------------------


def test_key_repr_hides_the_secret() -> None:
    assert "0123" not in repr(KEY) and "0123" not in str(KEY)


def test_generate_and_load_key_file(tmp_path: Path) -> None:
    path = tmp_path / "fabric.key"
    auth.generate_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    key = auth.SharedKey.from_file(path)
    assert key.mac(b"r", b"", b"", "a", "b") != KEY.mac(b"r", b"", b"", "a", "b")
    with pytest.raises(FileExistsError):
        auth.generate_key_file(path)


def test_key_file_surrounding_whitespace_ignored(tmp_path: Path) -> None:
    path = tmp_path / "fabric.key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    assert auth.SharedKey.from_file(path).mac(b"r", b"", b"", "a", "b") == \
        KEY.mac(b"r", b"", b"", "a", "b")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_key_file_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "fabric.key"
    path.write_bytes(b"k" * 64)
    path.chmod(mode)
    with pytest.raises(FabricConfigError, match="chmod 600"):
        auth.SharedKey.from_file(path)


def test_short_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "fabric.key"
    path.write_bytes(b"short\n")
    path.chmod(0o600)
    with pytest.raises(FabricConfigError, match="too short"):
        auth.SharedKey.from_file(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(FabricConfigError, match="cannot read"):
        auth.SharedKey.from_file(tmp_path / "nope")


# -- TLS ----------------------------------------------------------------------------------


def test_tls_from_conf() -> None:
    assert auth.TlsConfig.from_conf(SimpleNamespace(tls_enabled=False)) is None
    group = SimpleNamespace(tls_enabled=True, tls_cert_file="c", tls_key_file=None,
                            tls_ca_file="a")
    with pytest.raises(FabricConfigError, match="tls_key_file"):
        auth.TlsConfig.from_conf(group)
    group.tls_key_file = "k"
    assert auth.TlsConfig.from_conf(group) == auth.TlsConfig("c", "k", "a")


def test_tls_missing_files(tmp_path: Path) -> None:
    config = auth.TlsConfig(str(tmp_path / "c"), str(tmp_path / "k"), str(tmp_path / "a"))
    with pytest.raises(FabricConfigError, match="cannot load"):
        config.server_context()


def test_certificate_names() -> None:
    cert = {"subject": ((("commonName", "cn-name"),),),
            "subjectAltName": (("DNS", "host-a"), ("IP Address", "10.0.0.1"),
                               ("email", "x@y"))}
    assert auth.certificate_names(cert) == ["host-a", "10.0.0.1"]
    del cert["subjectAltName"]
    assert auth.certificate_names(cert) == ["cn-name"]


def _tls_pair(server_tls: auth.TlsConfig, client_tls: auth.TlsConfig,
              server_name: str) -> tuple[Connection, Connection]:
    left, right = socket.socketpair()
    server_ctx, client_ctx = server_tls.server_context(), client_tls.client_context()
    wrapped: list[ssl.SSLSocket] = []
    client_sock = in_thread(
        lambda: wrapped.append(server_ctx.wrap_socket(right, server_side=True)),
        lambda: client_ctx.wrap_socket(left, server_hostname=server_name))
    return Connection(client_sock, "client"), Connection(wrapped[0], "server")


def test_tls_handshake_checks_client_certificate_name(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server_tls = make_host_cert(tmp_path, "host-b", ca)
    # host-a holds the key but presents a certificate issued to host-x.
    impostor = make_host_cert(tmp_path, "host-a", ca, san="host-x")
    client, server = _tls_pair(server_tls, impostor, "host-b")
    with pytest.raises(FabricAuthError):
        in_thread(lambda: auth.client_handshake(client, "host-a", "host-b", KEY),
                  lambda: auth.server_handshake(server, "host-b", KEY))
    assert not server.authenticated


def test_tls_handshake_with_right_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server_tls = make_host_cert(tmp_path, "host-b", ca)
    client_tls = make_host_cert(tmp_path, "host-a", ca)
    client, server = _tls_pair(server_tls, client_tls, "host-b")
    name = in_thread(lambda: auth.client_handshake(client, "host-a", "host-b", KEY),
                     lambda: auth.server_handshake(server, "host-b", KEY))
    assert name == "host-a"
    # Frames cross TLS without sendmsg.
    frame = wire.encode_pages(T.PUT_PAGES, 1, VM, [1, 2], [os.urandom(4096), bytes(4096)])
    received = in_thread(lambda: client.send(frame), server.receive)
    assert received.header.count == 2
