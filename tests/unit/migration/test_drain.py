"""Planning a host drain (``migration.drain``): pure, no hosts."""

from __future__ import annotations

import pytest

from nova_ipmigrate.migration.drain import DrainPlan, Part, PlannedMove, plan_drain


def part(main: str, vm: str, **pages: int) -> Part:
    return Part(main, f"/{vm}/pc.ram", vm, dict(pages))


def test_from_report() -> None:
    p = Part.from_report({"main_host": "h1", "path": "/a", "vm": "v",
                          "pages_by_host": {"h1": 3, "h2": "7"}, "holders": ["h2"]})
    assert p == Part("h1", "/a", "v", {"h1": 3, "h2": 7})
    with pytest.raises(ValueError, match="bad parts entry"):
        Part.from_report({"main_host": "h1", "path": "/a", "vm": "v", "pages_by_host": []})


def test_prefers_a_host_already_holding_a_part_of_the_vm() -> None:
    parts = [part("h1", "a", h1=10, h2=100, h3=5)]
    plan = plan_drain("h2", parts, {"h3": 200, "h4": 10_000})
    assert plan.moves == [PlannedMove("h1", "/a/pc.ram", "a", "h2", "h3", 100)]
    assert plan.complete and not plan.unplaced


def test_otherwise_the_host_with_the_most_room() -> None:
    parts = [part("h1", "a", h1=10, h2=100)]
    plan = plan_drain("h2", parts, {"h3": 200, "h4": 300, "h5": 150})
    assert [m.dest for m in plan.moves] == ["h4"]


def test_a_holder_without_room_for_the_whole_part_is_passed_over() -> None:
    parts = [part("h1", "a", h1=10, h2=100, h3=5)]
    plan = plan_drain("h2", parts, {"h3": 99, "h4": 100})
    assert [m.dest for m in plan.moves] == ["h4"]


def test_never_the_drained_host_the_main_host_or_an_excluded_one() -> None:
    parts = [part("h1", "a", h1=10, h2=100)]
    free = {"h1": 10_000, "h2": 10_000, "h3": 5_000, "h4": 200}
    plan = plan_drain("h2", parts, free, exclude={"h3"})
    assert [m.dest for m in plan.moves] == ["h4"]
    plan = plan_drain("h2", parts, free, exclude=("h3", "h4"))
    assert plan.moves == [] and not plan.complete
    [(p, why)] = plan.unplaced
    assert p is parts[0] and "no host has room for 100 pages" in why
    assert "'h4': 200" in why   # the room it saw


def test_room_is_reserved_as_parts_are_placed() -> None:
    parts = [part("h1", "a", h1=1, h2=60), part("h1", "b", h1=1, h2=50),
             part("h9", "c", h9=1, h2=30)]
    plan = plan_drain("h2", parts, {"h3": 100, "h4": 60})
    # largest first: a (60) -> h3 (most room, 40 left); b (50) -> h4 (60 > 40);
    # c (30) -> h3 (40 left, h4 has 10)
    assert [(m.vm, m.dest, m.pages) for m in plan.moves] == [
        ("a", "h3", 60), ("b", "h4", 50), ("c", "h3", 30)]
    assert plan.complete
    plan = plan_drain("h2", parts, {"h3": 100})
    # a takes 60 of h3's 100: b (50) no longer fits there, c (30) still does
    assert [(m.vm, m.dest) for m in plan.moves] == [("a", "h3"), ("c", "h3")]
    assert [p.vm for p, _ in plan.unplaced] == ["b"]
    assert "'h3': 40" in plan.unplaced[0][1]


def test_the_planner_does_not_change_the_callers_room() -> None:
    free = {"h3": 100}
    plan_drain("h2", [part("h1", "a", h1=1, h2=60)], free)
    assert free == {"h3": 100}


def test_vms_whose_main_host_is_drained_are_reported() -> None:
    parts = [part("h2", "m", h2=10, h3=40), part("h1", "a", h1=1, h2=5)]
    plan = plan_drain("h2", parts, {"h3": 100, "h4": 100})
    assert [p.vm for p in plan.main_host_vms] == ["m"]
    assert [m.vm for m in plan.moves] == ["a"]
    assert not plan.complete


def test_parts_not_on_the_drained_host_are_ignored() -> None:
    parts = [part("h1", "a", h1=1, h3=5), part("h1", "b", h1=1, h2=0, h3=5)]
    plan = plan_drain("h2", parts, {"h3": 100, "h4": 100})
    assert plan.moves == [] and plan.complete and plan.unplaced == []


def test_equal_room_is_broken_by_name_deterministically() -> None:
    parts = [part("h1", "a", h1=1, h2=10)]
    first = plan_drain("h2", parts, {"h3": 50, "h4": 50}).moves
    again = plan_drain("h2", parts, {"h4": 50, "h3": 50}).moves
    assert first == again


def test_summary() -> None:
    parts = [part("h2", "m", h2=10, h3=40), part("h1", "a", h1=1, h2=5),
             part("h1", "big", h1=1, h2=1_000)]
    plan = plan_drain("h2", parts, {"h3": 100})
    text = plan.summary()
    lines = text.splitlines()
    assert lines[0] == "drain h2: 1 part move(s)"
    assert "  a (h1:/a/pc.ram): 5 pages h2 -> h3" in lines
    assert "  m: h2 is its main host: needs the main-host move" in lines
    assert any(line.startswith("  big: part on h2 not placed: no host has room for 1000")
               for line in lines)
    assert DrainPlan("h5").summary() == "drain h5: 0 part move(s)"
    assert DrainPlan("h5").complete
