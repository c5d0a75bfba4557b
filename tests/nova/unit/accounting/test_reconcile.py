"""The agents' truth against placement's books: one drift entry per mismatch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from nova_ipmigrate import exception
from nova_ipmigrate.accounting import reconcile
from nova_ipmigrate.accounting.reconcile import drift_of

RP = {"main": "rp-main", "subA": "rp-a", "subB": "rp-b", "spare": "rp-spare"}
#: pages of 4 KiB: 256 pages are 1 MiB
MIB_PAGES = 256


def _books(**extra: dict[str, int]) -> dict[str, dict[str, int]]:
    books = {"rp-main": {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10},
             "rp-a": {"MEMORY_MB": 512}, "rp-b": {"MEMORY_MB": 512}}
    books.update(extra)
    return books


def test_exact_books() -> None:
    pages = {"main": 1024 * MIB_PAGES, "subA": 512 * MIB_PAGES, "subB": 512 * MIB_PAGES}
    assert drift_of("vm1", "main", pages, _books(), RP) == []


def test_entitlement_larger_than_pages() -> None:
    # a part pages in and out within its entitlement: fewer pages are no drift
    pages = {"main": 10, "subA": 1, "subB": 512 * MIB_PAGES}
    assert drift_of("vm1", "main", pages, _books(), RP) == []


def test_pages_without_allocation() -> None:
    pages = {"main": 1024 * MIB_PAGES, "subA": 512 * MIB_PAGES + 1, "spare": 3}
    books = _books()
    del books["rp-b"]
    assert drift_of("vm1", "main", pages, books, RP) == [
        {"vm": "vm1", "host": "spare", "why": "pages without (enough) memory allocated",
         "pages": 3, "allocated_mb": 0, "needed_mb": 1},
        # one page over 512 MiB needs 513 MiB (rounded up)
        {"vm": "vm1", "host": "subA", "why": "pages without (enough) memory allocated",
         "pages": 512 * MIB_PAGES + 1, "allocated_mb": 512, "needed_mb": 513},
    ]


def test_pages_on_a_host_nova_does_not_know() -> None:
    pages = {"main": 1, "subA": 1, "subB": 1, "stranger": MIB_PAGES}
    (d,) = drift_of("vm1", "main", pages, _books(), RP)
    assert (d["host"], d["allocated_mb"], d["needed_mb"]) == ("stranger", 0, 1)


def test_allocation_without_part() -> None:
    pages = {"main": 1024 * MIB_PAGES, "subA": 512 * MIB_PAGES}      # subB moved away
    books = _books(**{"rp-unknown": {"MEMORY_MB": 64}})
    assert drift_of("vm1", "main", pages, books, RP) == [
        {"vm": "vm1", "host": "subB", "why": "memory allocated where no part is",
         "allocated_mb": 512},
        {"vm": "vm1", "host": "rp-unknown", "why": "memory allocated where no part is",
         "allocated_mb": 64},
    ]


def test_main_host_memory_without_pages_is_no_drift() -> None:
    pages = {"subA": 512 * MIB_PAGES, "subB": 512 * MIB_PAGES}
    assert drift_of("vm1", "main", pages, _books(), RP) == []


def test_vcpu_off_the_main_host() -> None:
    pages = {"main": 1, "subA": 1, "subB": 1}
    books = _books()
    books["rp-main"] = {"MEMORY_MB": 1024}
    books["rp-a"] = {"MEMORY_MB": 512, "VCPU": 2}
    assert drift_of("vm1", "main", pages, books, RP) == [
        {"vm": "vm1", "host": "main", "why": "the main host holds no VCPU of the instance",
         "vcpu_on": ["subA"]}]


def test_no_books_at_all() -> None:
    pages = {"main": MIB_PAGES, "subA": MIB_PAGES}
    whys = [(d["host"], d["why"]) for d in drift_of("vm1", "main", pages, {}, RP)]
    assert whys == [("main", "pages without (enough) memory allocated"),
                    ("subA", "pages without (enough) memory allocated"),
                    ("main", "the main host holds no VCPU of the instance")]


class FakeLedger:
    def __init__(self, books: dict[str, dict[str, dict[str, int]]]) -> None:
        self.books = books
        self.asked: list[str] = []

    def allocations(self, ctxt: Any, vm: str) -> dict[str, dict[str, int]]:
        self.asked.append(vm)
        return self.books.get(vm, {})


class FakeProviders:
    def rp(self, ctxt: Any, host: str) -> str:
        if host not in RP:
            raise exception.NotFound(f"Nova knows no compute host {host}", reason=host)
        return RP[host]


def test_reconcile(caplog: pytest.LogCaptureFixture) -> None:
    entries = [
        {"vm": "vm1", "main_host": "main",
         "pages_by_host": {"main": MIB_PAGES, "subA": MIB_PAGES, "subB": MIB_PAGES}},
        {"vm": "vm2", "main_host": "subA", "pages_by_host": {"subA": 1, "spare": 1}},
    ]
    ledger = FakeLedger({"vm1": _books(),
                         "vm2": {"rp-a": {"VCPU": 1, "MEMORY_MB": 8}}})
    with caplog.at_level("WARNING", logger=reconcile.__name__):
        drift = reconcile.reconcile(SimpleNamespace(), entries,
                                    ["main", "subA", "subB", "spare", "gone"],
                                    ledger, FakeProviders())  # type: ignore[arg-type]
    assert ledger.asked == ["vm1", "vm2"]
    assert drift == [{"vm": "vm2", "host": "spare",
                      "why": "pages without (enough) memory allocated", "pages": 1,
                      "allocated_mb": 0, "needed_mb": 1}]
    assert "no provider for gone" in caplog.text
    assert "placement drift" in caplog.text
