"""Moves of MEMORY_MB between the providers of one instance consumer.

Every move of a part is one ``POST /allocations`` (microversion 1.28) that rewrites
the instance consumer and empties the part consumers that held the destination's
memory since the scheduler claimed it, all with consumer generations: placement
applies all of it or nothing, and a concurrent writer makes it fail (409) instead
of being overwritten.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from nova_ipmigrate import exception

LOG = logging.getLogger(__name__)

MEMORY_MB = "MEMORY_MB"
#: the placement microversion of consumer generations and multi-consumer POSTs
VERSION = "1.28"
#: attempts of a POST whose consumers changed meanwhile (re-read each time)
ATTEMPTS = 4

Allocations = dict[str, dict[str, int]]       # provider uuid -> resource class -> amount


@dataclasses.dataclass(frozen=True)
class Move:
    """``mb`` MiB of the instance's memory go from provider ``source`` to ``dest``."""
    source: str
    dest: str
    mb: int

    def to_list(self) -> list[Any]:
        return [self.source, self.dest, self.mb]

    @classmethod
    def from_list(cls, value: Iterable[Any]) -> Move:
        s, d, mb = value
        return cls(str(s), str(d), int(mb))


def resources(allocations: Mapping[str, Any]) -> Allocations:
    """Provider -> resources of a ``GET /allocations/{consumer}`` body's allocations."""
    return {rp: {rc: int(n) for rc, n in dict(a.get("resources", {})).items()}
            for rp, a in allocations.items()}


def memory_on(allocs: Allocations, rp: str) -> int:
    return int(allocs.get(rp, {}).get(MEMORY_MB, 0))


def apply_moves(allocs: Allocations, moves: Iterable[Move]) -> Allocations:
    """``allocs`` after ``moves``; a provider left with nothing is dropped. A move of
    more than its source holds is refused (ValueError): it would hide a drift."""
    out = copy.deepcopy(allocs)
    for m in moves:
        if m.mb <= 0 or m.source == m.dest:
            raise ValueError(f"bad move {m}")
        have = memory_on(out, m.source)
        if have < m.mb:
            raise ValueError(f"provider {m.source} holds {have} MiB of the instance, "
                             f"a move of {m.mb} MiB was asked")
        out[m.source][MEMORY_MB] = have - m.mb
        if not out[m.source][MEMORY_MB]:
            del out[m.source][MEMORY_MB]
        if not out[m.source]:
            del out[m.source]
        out.setdefault(m.dest, {})
        out[m.dest][MEMORY_MB] = memory_on(out, m.dest) + m.mb
    return out


def _body(allocs: Allocations) -> dict[str, Any]:
    return {rp: {"resources": dict(r)} for rp, r in allocs.items()}


class Ledger:
    """Placement writes of the engine's Nova backend (``client``: Nova's
    ``SchedulerReportClient``; its ``get``/``post``/``delete`` speak to placement)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def consumer(self, ctxt: Any, uuid: str) -> dict[str, Any]:
        """``GET /allocations/{uuid}``: allocations (provider -> resources),
        consumer_generation, project_id, user_id (an unknown consumer: empty)."""
        resp = self.client.get(f"/allocations/{uuid}", version=VERSION,
                               global_request_id=getattr(ctxt, "global_id", None))
        if resp is None or resp.status_code != 200:
            raise exception.Unavailable(
                f"placement does not answer GET /allocations/{uuid}: "
                f"{getattr(resp, 'text', 'no response')}", reason="placement")
        body = resp.json()
        return {"allocations": resources(body.get("allocations") or {}),
                "consumer_generation": body.get("consumer_generation"),
                "project_id": body.get("project_id"), "user_id": body.get("user_id")}

    def allocations(self, ctxt: Any, uuid: str) -> Allocations:
        return dict(self.consumer(ctxt, uuid)["allocations"])

    def fold(self, ctxt: Any, instance: str, moves: list[Move], claims: list[str]) -> bool:
        """Apply ``moves`` to the instance consumer and empty the ``claims`` (part
        consumers), in one POST. False when there was nothing to do: every claim is
        empty already (this fold, or a release, happened before)."""
        for attempt in range(1, ATTEMPTS + 1):
            inst = self.consumer(ctxt, instance)
            parts = {c: self.consumer(ctxt, c) for c in claims}
            if claims and not any(p["allocations"] for p in parts.values()):
                return False
            try:
                new = apply_moves(inst["allocations"], moves)
            except ValueError as exc:
                raise exception.Invalid(f"placement does not hold what instance {instance} "
                                        f"should move: {exc}", reason=str(exc)) from exc
            body = {instance: {"allocations": _body(new), "project_id": inst["project_id"],
                               "user_id": inst["user_id"],
                               "consumer_generation": inst["consumer_generation"]}}
            for c, p in parts.items():
                body[c] = {"allocations": {}, "project_id": p["project_id"] or
                           inst["project_id"], "user_id": p["user_id"] or inst["user_id"],
                           "consumer_generation": p["consumer_generation"]}
            if self.post(ctxt, body, attempt):
                LOG.info("placement: instance %s: %s", instance, ", ".join(
                    f"{m.mb} MiB {m.source} -> {m.dest}" for m in moves))
                return True
        raise exception.Conflict(f"placement: the allocations of instance {instance} kept "
                                 f"changing during {ATTEMPTS} attempts", reason=instance)

    def release(self, ctxt: Any, claims: Iterable[str]) -> None:
        """Give back what part consumers hold (an operation that did not move them)."""
        for c in claims:
            resp = self.client.delete(f"/allocations/{c}", version=VERSION,
                                      global_request_id=getattr(ctxt, "global_id", None))
            if resp is None or resp.status_code not in (204, 404):
                raise exception.Unavailable(
                    f"placement refused DELETE /allocations/{c}: "
                    f"{getattr(resp, 'text', 'no response')}", reason="placement")

    def post(self, ctxt: Any, body: dict[str, Any], attempt: int = 1) -> bool:
        """One ``POST /allocations``: True when applied, False on a concurrent update
        (re-read and try again), raised otherwise."""
        resp = self.client.post("/allocations", body, version=VERSION,
                                global_request_id=getattr(ctxt, "global_id", None))
        if resp is not None and resp.status_code == 204:
            return True
        if resp is not None and resp.status_code == 409 and _code(resp) == \
                "placement.concurrent_update":
            LOG.info("placement: concurrent update (attempt %d): %s", attempt, resp.text)
            return False
        if resp is not None and resp.status_code == 409:
            raise exception.InsufficientCapacity(f"placement refused the allocations: "
                                                 f"{resp.text}", reason="placement")
        raise exception.Unavailable(f"placement refused POST /allocations: "
                                    f"{getattr(resp, 'status_code', None)} "
                                    f"{getattr(resp, 'text', 'no response')}",
                                    reason="placement")


def _code(resp: Any) -> str | None:
    try:
        return str(resp.json()["errors"][0].get("code"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
