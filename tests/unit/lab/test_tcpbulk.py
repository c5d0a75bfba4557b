"""The plain TCP bulk transfer over loopback (no lab, no root)."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from nova_ipmigrate.lab import tcpbulk


def test_send_and_receive_over_loopback() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        sent: list[int] = []
        sender = threading.Thread(target=lambda: sent.append(
            tcpbulk.send("127.0.0.1", port, 0.2)))
        sender.start()
        rate = tcpbulk.receive(listener, timeout=10)
        sender.join()
    assert rate.bytes == sent[0] > 0
    assert 0 < rate.seconds < 5
    assert rate.mbit_per_s == pytest.approx(rate.bytes * 8 / rate.seconds / 1e6)


def test_rate_of_nothing_is_zero() -> None:
    assert tcpbulk.TransferRate(0, 0.0).bits_per_s == 0.0


def test_receiver_command_prints_ready_then_result(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcpbulk, "receive",
                        lambda listener, timeout: tcpbulk.TransferRate(1000, 0.5))
    assert tcpbulk.main(["recv", "--port", "0"]) == 0
    ready, result = capsys.readouterr().out.splitlines()
    assert ready == tcpbulk.READY
    assert json.loads(result) == {"bytes": 1000, "seconds": 0.5}
