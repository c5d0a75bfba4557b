"""tc rates of lab links, and the tc commands that shape a host's link."""

from __future__ import annotations

import pytest

from nova_ipmigrate.lab import shaping


@pytest.mark.parametrize(("text", "bits"), [
    ("1gbit", 10**9), ("100mbit", 10**8), ("500kbit", 500_000), ("2.5gbit", 2_500_000_000),
    ("1Gbit", 10**9), (" 10mbit ", 10**7), ("1mibit", 2**20), ("125mbps", 10**9),
    ("1kbps", 8000), ("64000bit", 64000),
])
def test_parse_rate(text: str, bits: int) -> None:
    assert shaping.parse_rate(text) == bits


@pytest.mark.parametrize("text", ["", "fast", "100", "1.2.3mbit", "10 foo", "-1mbit",
                                  "mbit", "1000bit"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(shaping.RateError):
        shaping.parse_rate(text)


def test_bare_number_is_refused_because_tc_reads_it_as_bytes() -> None:
    with pytest.raises(shaping.RateError, match="unit"):
        shaping.parse_rate("1000000")


@pytest.mark.parametrize("link", [None, "", "none", "None", " unshaped "])
def test_unshaped_links(link: str | None) -> None:
    assert shaping.normalize_link(link) is None


def test_normalize_link_checks_and_lowercases() -> None:
    assert shaping.normalize_link(" 1GBit") == "1gbit"
    with pytest.raises(shaping.RateError):
        shaping.normalize_link("1 gigabit")


def test_burst_covers_the_timer_at_high_rates_and_gso_at_low() -> None:
    assert shaping.tbf_burst(10**8) == 64 * 1024
    assert shaping.tbf_burst(10**9) == 500_000
    assert shaping.tbf_burst(10**10) == 5_000_000


def test_qdisc_command_shapes_with_a_token_bucket() -> None:
    assert shaping.qdisc_command("ipm-h1", "eth0", "100mbit") == [
        "tc", "-n", "ipm-h1", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "tbf",
        "rate", "100000000bit", "burst", "65536", "latency", shaping.TBF_LATENCY]


def test_qdisc_command_unshapes() -> None:
    assert shaping.qdisc_command("ipm-sw", "h2", None) == [
        "tc", "-n", "ipm-sw", "qdisc", "del", "dev", "h2", "root"]


def test_prio_queue_sits_inside_the_token_bucket() -> None:
    assert shaping.prio_command("ipm-h1", "eth0") == [
        "tc", "-n", "ipm-h1", "qdisc", "replace", "dev", "eth0", "parent", "1:1", "handle",
        "10:", "pfifo_fast"]
