from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.engine.fakes import Engine, FakeAgents, make_notifier


@pytest.fixture
def agents() -> FakeAgents:
    a = FakeAgents({"h1": 1000, "h2": 1000, "h3": 1000, "h4": 1000})
    a.add_vm("vm1", "h1", {"h1": 300, "h2": 200, "h3": 100})
    return a


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "engine.sqlite"


@pytest.fixture
def engine(db_path: Path, agents: FakeAgents) -> Iterator[Engine]:
    e = Engine(db_path, agents, notifier=make_notifier())
    yield e
    e.close()
