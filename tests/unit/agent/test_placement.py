"""Placement policies of paged-out pages, and loading them through stevedore."""

from __future__ import annotations

import pytest

from nova_ipmigrate.agent import placement
from nova_ipmigrate.agent.placement import Candidate, LeastLoaded, RoundRobin


def _cands(*held: int, down: tuple[int, ...] = ()) -> list[Candidate]:
    return [Candidate(i + 1, f"h{i + 1}", n, i + 1 not in down) for i, n in enumerate(held)]


def test_round_robin_turns_over_healthy_hosts() -> None:
    rr = RoundRobin()
    assert [rr.choose(_cands(0, 0, 0), 1) for _ in range(4)] == [1, 2, 3, 1]
    assert {rr.choose(_cands(0, 0, 0, down=(2,)), 1) for _ in range(4)} == {1, 3}


def test_least_loaded_picks_the_emptiest_healthy_host() -> None:
    assert LeastLoaded().choose(_cands(5, 2, 9), 1) == 2
    assert LeastLoaded().choose(_cands(5, 2, 9, down=(2,)), 1) == 1


def test_all_down_still_chooses_one() -> None:
    assert RoundRobin().choose(_cands(0, 0, down=(1, 2)), 1) in (1, 2)


@pytest.mark.parametrize("name", ["round_robin", "least_loaded"])
def test_policies_load_through_stevedore(name: str) -> None:
    assert hasattr(placement.load(name), "choose")


def test_unknown_policy_is_an_error() -> None:
    with pytest.raises(Exception, match="nope"):
        placement.load("nope")
