"""Placement writes: moves of MEMORY_MB between an instance consumer's providers,
folded in one POST /allocations with the part consumers emptied."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from nova_ipmigrate import exception
from nova_ipmigrate.accounting import placement
from nova_ipmigrate.accounting.placement import Ledger, Move, apply_moves

INST, C1, C2 = "inst-uuid", "claim-1", "claim-2"
CTXT = SimpleNamespace(global_id="req-global")


class Resp:
    def __init__(self, status_code: int, body: Any = None, text: str = "") -> None:
        self.status_code = status_code
        self._body = body
        self.text = text or f"status {status_code}"

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("no JSON body")
        return self._body


def _conflict(code: str) -> Resp:
    return Resp(409, {"errors": [{"status": 409, "code": code, "detail": "..."}]},
                text=f"409 {code}")


class FakePlacement:
    """Consumers (uuid -> allocations, generation, project, user) and the answers of
    the next POSTs (204 when none is queued; a 204 writes the body)."""

    def __init__(self) -> None:
        self.consumers: dict[str, dict[str, Any]] = {}
        self.posts: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.deletes: list[tuple[str, dict[str, Any]]] = []
        self.gets: list[tuple[str, dict[str, Any]]] = []
        self.post_answers: list[Resp] = []
        self.delete_answers: dict[str, Resp] = {}
        self.get_answer: Resp | None = None
        #: called after each POST answered (a concurrent writer)
        self.after_post: Any = None

    def consumer(self, uuid: str, allocations: dict[str, dict[str, int]], generation: int,
                 project: str | None = "proj", user: str | None = "user") -> None:
        self.consumers[uuid] = {"allocations": copy.deepcopy(allocations),
                                "generation": generation, "project": project,
                                "user": user}

    def get(self, url: str, **kw: Any) -> Resp:
        self.gets.append((url, kw))
        if self.get_answer is not None:
            return self.get_answer
        uuid = url.rsplit("/", 1)[1]
        c = self.consumers.get(uuid)
        if c is None or not c["allocations"]:
            return Resp(200, {"allocations": {}})
        return Resp(200, {
            "allocations": {rp: {"resources": dict(r), "generation": 7}
                            for rp, r in c["allocations"].items()},
            "consumer_generation": c["generation"], "project_id": c["project"],
            "user_id": c["user"]})

    def post(self, url: str, body: dict[str, Any], **kw: Any) -> Resp:
        self.posts.append((url, copy.deepcopy(body), kw))
        resp = self.post_answers.pop(0) if self.post_answers else Resp(204)
        if resp.status_code == 204:
            for uuid, c in body.items():
                allocs = {rp: dict(a["resources"]) for rp, a in c["allocations"].items()}
                gen = (c["consumer_generation"] or 0) + 1
                self.consumer(uuid, allocs, gen, c["project_id"], c["user_id"])
        if self.after_post is not None:
            self.after_post()
        return resp

    def delete(self, url: str, **kw: Any) -> Resp:
        self.deletes.append((url, kw))
        uuid = url.rsplit("/", 1)[1]
        if uuid in self.delete_answers:
            return self.delete_answers[uuid]
        if self.consumers.pop(uuid, None) is None:
            return Resp(404, text="no such consumer")
        return Resp(204)


@pytest.fixture
def client() -> FakePlacement:
    c = FakePlacement()
    c.consumer(INST, {"rp-main": {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10},
                      "rp-a": {"MEMORY_MB": 1536}}, generation=3)
    c.consumer(C1, {"rp-b": {"MEMORY_MB": 1536}}, generation=1, project=None, user=None)
    return c


# -- apply_moves -------------------------------------------------------------------


def test_apply_moves() -> None:
    allocs = {"rp-main": {"VCPU": 2, "MEMORY_MB": 2048}, "rp-a": {"MEMORY_MB": 512}}
    out = apply_moves(allocs, [Move("rp-main", "rp-a", 1024), Move("rp-main", "rp-b", 512)])
    assert out == {"rp-main": {"VCPU": 2, "MEMORY_MB": 512},
                   "rp-a": {"MEMORY_MB": 1536}, "rp-b": {"MEMORY_MB": 512}}
    # the input is untouched
    assert allocs == {"rp-main": {"VCPU": 2, "MEMORY_MB": 2048}, "rp-a": {"MEMORY_MB": 512}}


def test_apply_moves_drops_emptied_providers() -> None:
    allocs = {"rp-main": {"VCPU": 2, "MEMORY_MB": 1024}, "rp-a": {"MEMORY_MB": 512},
              "rp-b": {"MEMORY_MB": 256}}
    out = apply_moves(allocs, [Move("rp-a", "rp-main", 512), Move("rp-b", "rp-main", 256)])
    assert out == {"rp-main": {"VCPU": 2, "MEMORY_MB": 1792}}
    # a provider keeping other resources stays, without MEMORY_MB
    out = apply_moves({"rp-main": {"VCPU": 2, "MEMORY_MB": 512}},
                      [Move("rp-main", "rp-a", 512)])
    assert out == {"rp-main": {"VCPU": 2}, "rp-a": {"MEMORY_MB": 512}}


def test_apply_moves_chained() -> None:
    out = apply_moves({"rp-a": {"MEMORY_MB": 100}},
                      [Move("rp-a", "rp-b", 100), Move("rp-b", "rp-c", 60)])
    assert out == {"rp-b": {"MEMORY_MB": 40}, "rp-c": {"MEMORY_MB": 60}}


@pytest.mark.parametrize(("move", "match"), [
    (Move("rp-a", "rp-b", 513), "rp-a holds 512 MiB of the instance, a move of 513"),
    (Move("rp-x", "rp-b", 1), "rp-x holds 0 MiB"),
    (Move("rp-a", "rp-b", 0), "bad move"),
    (Move("rp-a", "rp-b", -5), "bad move"),
    (Move("rp-a", "rp-a", 10), "bad move"),
])
def test_apply_moves_refused(move: Move, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_moves({"rp-a": {"MEMORY_MB": 512}}, [move])


def test_move_list_round_trip() -> None:
    m = Move("rp-a", "rp-b", 5)
    assert m.to_list() == ["rp-a", "rp-b", 5]
    assert Move.from_list(["rp-a", "rp-b", "5"]) == m


# -- Ledger ------------------------------------------------------------------------


def test_consumer_read(client: FakePlacement) -> None:
    got = Ledger(client).consumer(CTXT, INST)
    assert got == {"allocations": {"rp-main": {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10},
                                   "rp-a": {"MEMORY_MB": 1536}},
                   "consumer_generation": 3, "project_id": "proj", "user_id": "user"}
    assert client.gets == [(f"/allocations/{INST}",
                            {"version": "1.28", "global_request_id": "req-global"})]
    assert Ledger(client).allocations(CTXT, "unknown") == {}


@pytest.mark.parametrize("answer", [None, Resp(503, text="placement is down")])
def test_consumer_read_fails(client: FakePlacement, answer: Resp | None) -> None:
    client.get = lambda url, **kw: answer   # type: ignore[method-assign,assignment]
    with pytest.raises(exception.Unavailable, match=f"GET /allocations/{INST}"):
        Ledger(client).consumer(CTXT, INST)


def test_fold_posts_one_body(client: FakePlacement) -> None:
    assert Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1]) is True
    ((url, body, kw),) = client.posts
    assert url == "/allocations"
    assert kw == {"version": "1.28", "global_request_id": "req-global"}
    assert body == {
        INST: {"allocations": {"rp-main": {"resources": {"VCPU": 2, "MEMORY_MB": 1024,
                                                         "DISK_GB": 10}},
                               "rp-b": {"resources": {"MEMORY_MB": 1536}}},
               "project_id": "proj", "user_id": "user", "consumer_generation": 3},
        # the part consumer has no project/user of its own: the instance's
        C1: {"allocations": {}, "project_id": "proj", "user_id": "user",
             "consumer_generation": 1},
    }


def test_fold_keeps_a_claim_project(client: FakePlacement) -> None:
    client.consumer(C2, {"rp-c": {"MEMORY_MB": 10}}, generation=5, project="p2",
                    user="u2")
    Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-c", 10)], [C2])
    ((_, body, _),) = client.posts
    assert body[C2] == {"allocations": {}, "project_id": "p2", "user_id": "u2",
                        "consumer_generation": 5}


def test_fold_retries_a_concurrent_update(client: FakePlacement) -> None:
    client.post_answers = [_conflict("placement.concurrent_update")]

    def writer() -> None:          # someone else wrote the instance meanwhile
        client.after_post = None
        client.consumers[INST]["generation"] = 4
    client.after_post = writer
    assert Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1]) is True
    assert [b[INST]["consumer_generation"] for _, b, _ in client.posts] == [3, 4]
    assert client.consumers[INST]["allocations"] == {
        "rp-main": {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10},
        "rp-b": {"MEMORY_MB": 1536}}
    assert client.consumers[C1]["allocations"] == {}


def test_fold_gives_up_after_the_attempts(client: FakePlacement) -> None:
    client.post_answers = [_conflict("placement.concurrent_update")
                           for _ in range(placement.ATTEMPTS)]
    with pytest.raises(exception.Conflict, match="kept changing"):
        Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1])
    assert len(client.posts) == placement.ATTEMPTS


def test_fold_other_conflict_is_insufficient_capacity(client: FakePlacement) -> None:
    client.post_answers = [_conflict("placement.undefined_code")]
    with pytest.raises(exception.InsufficientCapacity, match="refused the allocations"):
        Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1])
    assert len(client.posts) == 1


def test_fold_conflict_without_json_is_insufficient_capacity(client: FakePlacement
                                                             ) -> None:
    client.post_answers = [Resp(409, text="no body")]
    with pytest.raises(exception.InsufficientCapacity):
        Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1])


@pytest.mark.parametrize("answer", [Resp(500, text="boom"), Resp(400, text="bad body")])
def test_fold_refused_post_is_unavailable(client: FakePlacement, answer: Resp) -> None:
    client.post_answers = [answer]
    with pytest.raises(exception.Unavailable, match=answer.text):
        Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1])


def test_fold_when_the_claims_are_empty_already(client: FakePlacement) -> None:
    ledger = Ledger(client)
    assert ledger.fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1]) is True
    # settled again (a restarted engine): nothing to do, nothing written
    assert ledger.fold(CTXT, INST, [Move("rp-a", "rp-b", 1536)], [C1]) is False
    assert len(client.posts) == 1
    # a released claim (an unknown consumer for placement) is empty too
    assert ledger.fold(CTXT, INST, [Move("rp-main", "rp-c", 10)], ["never-claimed"]) \
        is False
    assert len(client.posts) == 1


def test_fold_of_more_than_placement_holds(client: FakePlacement) -> None:
    with pytest.raises(exception.Invalid, match=f"does not hold what instance {INST}"):
        Ledger(client).fold(CTXT, INST, [Move("rp-a", "rp-b", 4096)], [C1])
    assert client.posts == []


def test_release(client: FakePlacement) -> None:
    Ledger(client).release(CTXT, [C1, "gone-already"])
    assert [u for u, _ in client.deletes] == [f"/allocations/{C1}",
                                              "/allocations/gone-already"]
    assert client.deletes[0][1] == {"version": "1.28", "global_request_id": "req-global"}
    assert C1 not in client.consumers


def test_release_refused(client: FakePlacement) -> None:
    client.delete_answers[C1] = Resp(500, text="placement broke")
    with pytest.raises(exception.Unavailable, match="placement broke"):
        Ledger(client).release(CTXT, [C1])
    client.delete = lambda url, **kw: None  # type: ignore[method-assign,assignment]
    with pytest.raises(exception.Unavailable, match="no response"):
        Ledger(client).release(CTXT, [C1])
