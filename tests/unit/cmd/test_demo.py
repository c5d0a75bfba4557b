"""ipmigrate-demo's argument checks (no run)."""

from __future__ import annotations

import pytest

from nova_ipmigrate.cmd import demo


@pytest.mark.parametrize("args", [["--limit-pct", "0"], ["--limit-pct", "101"],
                                  ["--ram-mb", "64"], ["--seconds", "0"]])
def test_bad_arguments_are_refused_before_anything_runs(
        args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("must not run")
    monkeypatch.setattr(demo, "run_single_host", boom)
    assert demo.main(args) == 2


def test_help_mentions_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    out = capsys.readouterr().out
    assert "--compare-readahead" in out and "--limit-pct" in out


def test_every_lab_scenario_can_be_asked_for() -> None:
    from nova_ipmigrate.cmd import lab
    from nova_ipmigrate.lab.scenario import SCENARIOS

    def choices(parser: object) -> set[str]:
        for action in parser._actions:  # type: ignore[attr-defined]
            if action.dest == "scenario":
                return set(action.choices)
            sub = getattr(action, "choices", None)
            if isinstance(sub, dict) and "boot" in sub:
                return choices(sub["boot"])
        raise AssertionError("no --scenario")

    assert choices(demo.parser()) == set(SCENARIOS)
    assert choices(lab.parser()) == set(SCENARIOS)
