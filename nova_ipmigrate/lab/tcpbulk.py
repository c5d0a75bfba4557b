"""Plain TCP bulk transfer between two lab hosts: the physical limit ``R``.

BENCHMARKS.md measures every transfer against a plain TCP bulk transfer over
the same link in the same run. This module is that transfer: a minimal
receiver and sender (run inside hosts as ``python -m nova_ipmigrate.lab.tcpbulk``)
and :func:`measure`, which runs both in a lab and returns the rate.

The receiver times from the first byte to the sender's close, so connection
set-up and the start of the processes do not count.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nova_ipmigrate.lab.hosts import Lab

CHUNK = 1 << 20
READY = "listening"


@dataclass(frozen=True)
class TransferRate:
    bytes: int
    seconds: float

    @property
    def bits_per_s(self) -> float:
        return self.bytes * 8 / self.seconds if self.seconds > 0 else 0.0

    @property
    def mbit_per_s(self) -> float:
        return self.bits_per_s / 1e6


def receive(listener: socket.socket, timeout: float) -> TransferRate:
    """Accept one connection on ``listener`` and read it to its end."""
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    buf = bytearray(CHUNK)
    total = 0
    start = end = 0.0
    with conn:
        conn.settimeout(timeout)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            end = time.monotonic()
            if total == 0:
                start = end
            total += n
    return TransferRate(total, end - start)


def send(address: str, port: int, seconds: float, timeout: float = 10.0) -> int:
    """Send for ``seconds`` to ``address:port``; the number of bytes sent."""
    data = bytes(CHUNK)
    sent = 0
    with socket.create_connection((address, port), timeout=timeout) as conn:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.sendall(data)
            sent += len(data)
    return sent


def measure(lab: Lab, src: int | str, dst: int | str, seconds: float = 2.0,
            port: int = 5201) -> TransferRate:
    """Rate of one TCP stream from host ``src`` to host ``dst`` for ``seconds``."""
    dst_host = lab.host(dst)
    receiver = lab.exec_in(dst, [sys.executable, "-m", __name__, "recv", "--port", str(port),
                                 "--timeout", str(seconds + 30)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        line = receiver.stdout.readline().strip()
        if line != READY:
            raise RuntimeError(f"tcpbulk receiver in {dst_host.name} did not start: {line!r}")
        lab.run_in(src, [sys.executable, "-m", __name__, "send", dst_host.address,
                         "--port", str(port), "--seconds", str(seconds)],
                   check=True, timeout=seconds + 30)
        out, _ = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    result = json.loads(out)
    return TransferRate(result["bytes"], result["seconds"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nova_ipmigrate.lab.tcpbulk",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p_recv = sub.add_parser("recv", help="accept one connection, print bytes and seconds")
    p_recv.add_argument("--port", type=int, default=5201)
    p_recv.add_argument("--timeout", type=float, default=60.0)
    p_send = sub.add_parser("send", help="send zeros for a while")
    p_send.add_argument("address")
    p_send.add_argument("--port", type=int, default=5201)
    p_send.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    if args.command == "recv":
        with socket.create_server(("", args.port)) as listener:
            print(READY, flush=True)
            rate = receive(listener, args.timeout)
        print(json.dumps({"bytes": rate.bytes, "seconds": rate.seconds}), flush=True)
    else:
        send(args.address, args.port, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
