"""Link shaping of lab hosts: tc rate strings and the tc commands that apply them.

A host's link is shaped in both directions, like a NIC: its egress by a token
bucket on the host's ``eth0``, its ingress by the same bucket on the bridge port
(the switch side of its veth pair), whose egress is the host's ingress.
"""

from __future__ import annotations

import re

#: tc's rate units, in bit/s (``bps`` units are bytes per second, as in tc)
_RATE_UNITS: dict[str, int] = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
    "kibps": 8 * 2**10, "mibps": 8 * 2**20, "gibps": 8 * 2**30, "tibps": 8 * 2**40,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_UNSHAPED = {"", "none", "unshaped"}

#: queueing delay the token bucket allows before it drops (TCP adapts to it)
TBF_LATENCY = "20ms"
#: the bucket holds this long at the rate, and never less than a few GSO packets
_BURST_SECONDS = 0.004
_MIN_BURST = 64 * 1024


class RateError(ValueError):
    """A link rate that tc would not take, or would take with a surprising meaning."""


def parse_rate(text: str) -> int:
    """A tc rate (``1gbit``, ``100mbit``, ``125mbps``) in bit/s.

    A unit is required: tc reads a bare number as *bytes* per second, which is
    never what a lab user means.
    """
    match = _RATE_RE.match(text)
    if not match:
        raise RateError(f"invalid link rate {text!r}: expected a number and a tc unit, "
                        "e.g. 1gbit, 100mbit, 500kbit")
    unit = match.group(2).lower()
    if unit not in _RATE_UNITS:
        raise RateError(f"invalid link rate {text!r}: unknown unit {unit!r} "
                        f"(one of {', '.join(_RATE_UNITS)})")
    bits = int(float(match.group(1)) * _RATE_UNITS[unit])
    if bits < 8000:
        raise RateError(f"link rate {text!r} is below 8kbit")
    return bits


def normalize_link(link: str | None) -> str | None:
    """The canonical form of a link: ``None`` when unshaped, else a checked tc rate."""
    if link is None or link.strip().lower() in _UNSHAPED:
        return None
    parse_rate(link)
    return link.strip().lower()


def tbf_burst(rate_bits: int) -> int:
    """Bucket size in bytes: enough for the kernel timer granularity at this rate."""
    return max(int(rate_bits / 8 * _BURST_SECONDS), _MIN_BURST)


def qdisc_command(netns: str, dev: str, link: str | None) -> list[str]:
    """The tc command that shapes ``dev`` in ``netns`` to ``link`` (``None``: unshape)."""
    base = ["tc", "-n", netns, "qdisc"]
    if link is None:
        return [*base, "del", "dev", dev, "root"]
    rate = parse_rate(link)
    return [*base, "replace", "dev", dev, "root", "handle", "1:", "tbf", "rate", f"{rate}bit",
            "burst", str(tbf_burst(rate)), "latency", TBF_LATENCY]


def prio_command(netns: str, dev: str) -> list[str]:
    """Inside the token bucket, three priority bands (pfifo_fast, as behind a NIC).

    The fabric marks page-in traffic interactive and bulk copies as bulk
    (``fabric.connection.tune_socket``): with one FIFO behind the bucket, a
    page-in answer would wait behind megabytes of a part move on the same link.
    """
    return ["tc", "-n", netns, "qdisc", "replace", "dev", dev, "parent", "1:1", "handle",
            "10:", "pfifo_fast"]
