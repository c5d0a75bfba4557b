"""NovaBackend: what it asks Nova's scheduler for, what it records, how it settles
(fake Scheduler, Ledger and Providers; the flavor is a real Nova one)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from nova import objects
from oslo_utils.fixture import uuidsentinel as uuids

from nova_ipmigrate import exception
from nova_ipmigrate.accounting.backend import MIB, NovaBackend
from nova_ipmigrate.accounting.placement import Move
from nova_ipmigrate.accounting.scheduling import Claim
from nova_ipmigrate.engine.backend import RECORD
from tests.nova.unit.accounting import SPLIT, flavor, request_spec

VM = uuids.instance
CTXT = SimpleNamespace(global_id="req-1")


def rp(host: str) -> str:
    return f"rp-{host}"


class FakeScheduler:
    """Claims on ``dest`` or on the first of ``free`` hosts not ignored; a host in
    ``full`` has no room."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.free = ["sub1", "sub2", "sub3", "sub4"]
        self.full: set[str] = set()
        self._ids = itertools.count(1)

    def claim(self, ctxt: Any, instance: str, mb: int, *, op_id: str, purpose: str,
              ignore_hosts: Any = (), holders: Any = (), dest: str | None = None) -> Claim:
        self.calls.append({"ctxt": ctxt, "instance": instance, "mb": mb, "op_id": op_id,
                           "purpose": purpose, "ignore_hosts": list(ignore_hosts),
                           "holders": list(holders), "dest": dest})
        host = dest or next((h for h in self.free if h not in ignore_hosts
                             and h not in self.full), None)
        if host is None or host in self.full:
            raise exception.InsufficientCapacity(f"no room for {mb} MiB",
                                                 reason=dest or "no host")
        return Claim(host=host, rp=rp(host), consumer=f"consumer-{next(self._ids)}", mb=mb)


class FakeLedger:
    def __init__(self, allocs: dict[str, dict[str, int]]) -> None:
        self.allocs = allocs
        self.folds: list[tuple[Any, str, list[Move], list[str]]] = []
        self.releases: list[tuple[Any, list[str]]] = []
        self.fold_result = True

    def allocations(self, ctxt: Any, vm: str) -> dict[str, dict[str, int]]:
        assert ctxt is CTXT and vm == VM
        return self.allocs

    def fold(self, ctxt: Any, instance: str, moves: list[Move], claims: list[str]) -> bool:
        self.folds.append((ctxt, instance, list(moves), list(claims)))
        return self.fold_result

    def release(self, ctxt: Any, claims: Any) -> None:
        self.releases.append((ctxt, list(claims)))


class FakeProviders:
    def rp(self, ctxt: Any, host: str) -> str:
        assert ctxt is CTXT
        return rp(host)


@pytest.fixture
def scheduler() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def ledger() -> FakeLedger:
    # a split instance: 1024 MiB on its main host, parts on sub1 and sub2
    return FakeLedger({rp("main"): {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10},
                       rp("sub1"): {"MEMORY_MB": 1536}, rp("sub2"): {"MEMORY_MB": 1536}})


@pytest.fixture
def backend(scheduler: FakeScheduler, ledger: FakeLedger) -> NovaBackend:
    return NovaBackend(lambda: CTXT, scheduler, ledger, FakeProviders())  # type: ignore[arg-type]


def test_identity(backend: NovaBackend) -> None:
    assert backend.name == "nova" and backend.schedules is True


# -- claim_part ----------------------------------------------------------------------


def test_claim_part_scheduler_picks(backend: NovaBackend, scheduler: FakeScheduler) -> None:
    rec = backend.claim_part("op-1", VM, "main", "sub1", None, ["sub1", "sub2"],
                             avoid=["sub3"])
    (call,) = scheduler.calls
    assert call == {"ctxt": CTXT, "instance": VM, "mb": 1536, "op_id": "op-1",
                    "purpose": "part", "ignore_hosts": ["main", "sub1", "sub2", "sub3"],
                    "holders": ["sub1", "sub2"], "dest": None}
    assert rec == {"backend": "nova", "instance": VM, "claims": ["consumer-1"],
                   "moves": [[rp("sub1"), rp("sub4"), 1536]],
                   "claimed": [{"host": "sub4", "rp": rp("sub4"), "consumer": "consumer-1",
                                "mb": 1536}],
                   "dest": "sub4"}


def test_claim_part_to_a_given_destination(backend: NovaBackend,
                                           scheduler: FakeScheduler) -> None:
    rec = backend.claim_part("op-1", VM, "main", "sub1", "sub3", ["sub1", "sub2"],
                             avoid=["sub4"])
    (call,) = scheduler.calls
    assert call["ignore_hosts"] == ["sub1"] and call["dest"] == "sub3"
    assert call["purpose"] == "part"
    assert rec["dest"] == "sub3" and rec["moves"] == [[rp("sub1"), rp("sub3"), 1536]]


def test_claim_part_to_the_main_host(backend: NovaBackend,
                                     scheduler: FakeScheduler) -> None:
    rec = backend.claim_part("op-1", VM, "main", "sub2", "main", ["sub1", "sub2"])
    (call,) = scheduler.calls
    assert call["purpose"] == "reintegration" and call["dest"] == "main"
    assert call["ignore_hosts"] == ["sub2"]
    assert rec["moves"] == [[rp("sub2"), rp("main"), 1536]]


def test_claim_part_without_allocation(backend: NovaBackend,
                                       scheduler: FakeScheduler) -> None:
    with pytest.raises(exception.Invalid, match="placement holds no memory of instance"):
        backend.claim_part("op-1", VM, "main", "sub3", None, ["sub1", "sub2", "sub3"])
    assert scheduler.calls == []


def test_claim_part_refused(backend: NovaBackend, scheduler: FakeScheduler) -> None:
    scheduler.full = {"sub3", "sub4"}
    with pytest.raises(exception.InsufficientCapacity):
        backend.claim_part("op-1", VM, "main", "sub1", None, ["sub1", "sub2"])


# -- claim_reintegration -------------------------------------------------------------


def test_claim_reintegration(backend: NovaBackend, scheduler: FakeScheduler) -> None:
    rec = backend.claim_reintegration("op-2", VM, "main", ["sub1", "sub2", "sub3"])
    (call,) = scheduler.calls
    assert call["mb"] == 3072 and call["dest"] == "main"
    assert call["purpose"] == "reintegration"
    assert call["holders"] == ["sub1", "sub2", "sub3"]
    assert rec["moves"] == [[rp("sub1"), rp("main"), 1536], [rp("sub2"), rp("main"), 1536]]
    assert rec["claims"] == ["consumer-1"]


def test_claim_reintegration_without_allocation(backend: NovaBackend,
                                                scheduler: FakeScheduler) -> None:
    with pytest.raises(exception.Invalid, match="no memory of instance .* on sub3, sub4"):
        backend.claim_reintegration("op-2", VM, "main", ["sub3", "sub4"])
    assert scheduler.calls == []


# -- claim_split ---------------------------------------------------------------------


@pytest.fixture
def unsplit(ledger: FakeLedger) -> FakeLedger:
    ledger.allocs = {rp("main"): {"VCPU": 2, "MEMORY_MB": 4096, "DISK_GB": 10}}
    return ledger


def _stored(extra: dict[str, str] | None = None, memory_mb: int = 4096,
            name: str = "m1.split") -> Any:
    spec = request_spec(flavor(extra, memory_mb=memory_mb, name=name), instance_uuid=VM)
    return mock.patch.object(objects.RequestSpec, "get_by_instance_uuid", return_value=spec)


@pytest.fixture
def split_flavor() -> Iterator[Any]:
    with _stored({**SPLIT, "ipmigrate:sub_hosts": "3", "ipmigrate:resident_mb": "1000"}
                 ) as get:
        yield get


def test_claim_split_scheduler_picks(backend: NovaBackend, scheduler: FakeScheduler,
                                     unsplit: FakeLedger, split_flavor: Any) -> None:
    rec = backend.claim_split("op-3", VM, "main", [], None)
    split_flavor.assert_called_once_with(CTXT, VM)
    # 3096 MiB over 3 sub-hosts: 1032 each
    assert [(c["mb"], c["ignore_hosts"], c["holders"], c["dest"], c["purpose"])
            for c in scheduler.calls] == [
        (1032, ["main"], [], None, "part"),
        (1032, ["main", "sub1"], ["sub1"], None, "part"),
        (1032, ["main", "sub1", "sub2"], ["sub1", "sub2"], None, "part")]
    assert rec["sub_hosts"] == ["sub1", "sub2", "sub3"]
    assert rec["resident_limit"] == 1000 * MIB
    assert rec["claims"] == ["consumer-1", "consumer-2", "consumer-3"]
    assert rec["moves"] == [[rp("main"), rp(h), 1032] for h in ("sub1", "sub2", "sub3")]


def test_claim_split_uneven_parts(backend: NovaBackend, scheduler: FakeScheduler,
                                  unsplit: FakeLedger) -> None:
    with _stored({**SPLIT, "ipmigrate:sub_hosts": "3", "ipmigrate:resident_mb": "1094"}):
        rec = backend.claim_split("op-3", VM, "main", [], None)
    assert [m[2] for m in rec["moves"]] == [1001, 1001, 1000]


def test_claim_split_given_hosts_and_limit(backend: NovaBackend, scheduler: FakeScheduler,
                                           unsplit: FakeLedger, split_flavor: Any) -> None:
    rec = backend.claim_split("op-3", VM, "main", ["sub4", "sub2", "sub3"], 1000 * MIB)
    assert [c["dest"] for c in scheduler.calls] == ["sub4", "sub2", "sub3"]
    assert rec["sub_hosts"] == ["sub4", "sub2", "sub3"]
    assert rec["resident_limit"] == 1000 * MIB


def test_claim_split_releases_earlier_claims(backend: NovaBackend, scheduler: FakeScheduler,
                                             unsplit: FakeLedger, split_flavor: Any) -> None:
    scheduler.full = {"sub3", "sub4"}
    with pytest.raises(exception.InsufficientCapacity):
        backend.claim_split("op-3", VM, "main", [], None)
    assert len(scheduler.calls) == 3
    assert unsplit.releases == [(CTXT, ["consumer-1", "consumer-2"])]


def test_claim_split_first_claim_refused(backend: NovaBackend, scheduler: FakeScheduler,
                                         unsplit: FakeLedger, split_flavor: Any) -> None:
    scheduler.full = {"sub1", "sub2", "sub3", "sub4"}
    with pytest.raises(exception.InsufficientCapacity):
        backend.claim_split("op-3", VM, "main", [], None)
    assert len(scheduler.calls) == 1
    assert [c for _, c in unsplit.releases] in ([], [[]])      # nothing claimed


def test_claim_split_not_a_split_flavor(backend: NovaBackend, scheduler: FakeScheduler,
                                        unsplit: FakeLedger) -> None:
    with _stored({"hw:cpu_policy": "shared"}, name="m1.plain"):
        with pytest.raises(exception.Invalid, match="m1.plain, which is not a split-memory"):
            backend.claim_split("op-3", VM, "main", [], None)
    assert scheduler.calls == []


def test_claim_split_malformed_flavor(backend: NovaBackend, scheduler: FakeScheduler,
                                      unsplit: FakeLedger) -> None:
    with _stored({**SPLIT, "ipmigrate:sub_hosts": "lots"}, name="m1.bad"):
        with pytest.raises(exception.Invalid, match="flavor m1.bad: .*must be an integer"):
            backend.claim_split("op-3", VM, "main", [], None)
    assert scheduler.calls == []


@pytest.mark.parametrize(("sub_hosts", "limit", "match"), [
    ([], 1024 * MIB, "resident_limit must be 1048576000 or left out"),
    ([], 0, "resident_limit must be"),
    (["sub1"], None, "asks for 3 sub-hosts, not 1"),
])
def test_claim_split_disagrees_with_the_flavor(backend: NovaBackend,
                                               scheduler: FakeScheduler,
                                               unsplit: FakeLedger, split_flavor: Any,
                                               sub_hosts: list[str], limit: int | None,
                                               match: str) -> None:
    with pytest.raises(exception.Invalid, match=match):
        backend.claim_split("op-3", VM, "main", sub_hosts, limit)
    assert scheduler.calls == []


def test_claim_split_already_split(backend: NovaBackend, scheduler: FakeScheduler,
                                   ledger: FakeLedger, split_flavor: Any) -> None:
    # the ledger fixture has the instance split already
    with pytest.raises(exception.Invalid, match="holds 1024 MiB .* not its 4096 MiB"):
        backend.claim_split("op-3", VM, "main", [], None)
    assert scheduler.calls == []




# -- settle, release -----------------------------------------------------------------


def _op(record: dict[str, Any] | None) -> Any:
    return SimpleNamespace(id="op-9", params={"pages": 1, **({RECORD: record} if record
                                                             else {})})


def test_settle_done_folds(backend: NovaBackend, ledger: FakeLedger) -> None:
    rec = backend.claim_part("op-9", VM, "main", "sub1", None, ["sub1", "sub2"])
    backend.settle(_op(rec), "done")
    assert ledger.folds == [(CTXT, VM, [Move(rp("sub1"), rp("sub3"), 1536)],
                             ["consumer-1"])]
    assert ledger.releases == []
    ledger.fold_result = False            # settled before: still fine
    backend.settle(_op(rec), "done")
    assert len(ledger.folds) == 2


@pytest.mark.parametrize("state", ["failed", "aborted"])
def test_settle_other_ends_release(backend: NovaBackend, ledger: FakeLedger,
                                   state: str) -> None:
    rec = backend.claim_part("op-9", VM, "main", "sub1", None, ["sub1", "sub2"])
    backend.settle(_op(rec), state)
    assert ledger.releases == [(CTXT, ["consumer-1"])]
    assert ledger.folds == []


def test_settle_without_record(backend: NovaBackend, ledger: FakeLedger) -> None:
    backend.settle(_op(None), "done")
    backend.settle(SimpleNamespace(id="x", params=None), "failed")
    assert ledger.folds == [] and ledger.releases == []


def test_release(backend: NovaBackend, ledger: FakeLedger) -> None:
    backend.release(None)
    backend.release({})
    assert ledger.releases == []
    backend.release({"claims": ["c1", "c2"]})
    assert ledger.releases == [(CTXT, ["c1", "c2"])]


# -- main-host moves (Nova's live migration: nothing claimed here) -------------------


def test_main_moves_go_through_nova(backend: NovaBackend) -> None:
    assert backend.moves_main_host is True
    backend.check_main_move(VM)            # no refusal


def test_claim_main_move_to_a_given_host(backend: NovaBackend, scheduler: FakeScheduler,
                                         ledger: FakeLedger) -> None:
    rec = backend.claim_main_move("op-4", VM, "main", "sub4", ["sub1", "sub2"])
    assert rec == {"backend": "nova", "instance": VM, "via": "nova", "dest": "sub4",
                   "claims": [], "moves": []}
    assert scheduler.calls == [] and ledger.releases == []


def test_claim_main_move_scheduler_picks(backend: NovaBackend, scheduler: FakeScheduler,
                                         ledger: FakeLedger) -> None:
    rec = backend.claim_main_move("op-4", VM, "main", None, ["sub2", "sub1"])
    (call,) = scheduler.calls
    assert (call["mb"], call["purpose"], call["ignore_hosts"]) == (
        1024, "main_host", ["main", "sub1", "sub2"])
    assert rec["dest"] == "sub3" and rec["claims"] == []
    # the scheduler's claim is given back at once (Nova claims again for the move)
    assert ledger.releases == [(CTXT, ["consumer-1"])]


def test_settle_of_a_main_move_unmarks(backend: NovaBackend, ledger: FakeLedger) -> None:
    rec = backend.claim_main_move("op-4", VM, "main", "sub4", [])
    with mock.patch.object(backend, "_mark") as mark:
        backend.settle(_op(rec), "done")
        backend.settle(_op(rec), "failed")
    assert mark.call_args_list == [mock.call(CTXT, VM, None)] * 2
    assert ledger.folds == [] and ledger.releases == []
