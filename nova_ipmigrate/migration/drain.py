"""Host drain at the data-plane level: where every part on a host should go.

Draining a host empties it of every part of every split VM: the parts it holds
as a sub-host move by partial migration, each to a host chosen here; the VMs
whose *main host* it is cannot be moved by a sub-host move and are reported as
needing the main-host move. Planning is pure (tested without hosts); the lab
and, later, the engine execute the plan.

Destination choice for a part: never the drained host, the VM's main host or
an excluded (e.g. disabled) host; among hosts with room for the whole part,
prefer one that already holds a part of the same VM (fewer holders per VM,
and reintegration later has fewer sources), then the one with the most free
room. Room is reserved as parts are placed, so two parts never count on the
same free pages.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Part:
    """A split VM as its main host reports it (agent ``parts``)."""

    main_host: str
    path: str
    vm: str
    pages_by_host: dict[str, int]

    @classmethod
    def from_report(cls, entry: dict[str, object]) -> Part:
        pages = entry.get("pages_by_host")
        if not isinstance(pages, dict):
            raise ValueError(f"bad parts entry: {entry!r}")
        return cls(str(entry["main_host"]), str(entry["path"]), str(entry["vm"]),
                   {str(h): int(n) for h, n in pages.items()})


@dataclass(frozen=True)
class PlannedMove:
    main_host: str
    path: str
    vm: str
    source: str
    dest: str
    pages: int


@dataclass
class DrainPlan:
    host: str
    moves: list[PlannedMove] = field(default_factory=list)
    #: VMs whose main host is the drained host: they need the main-host move
    main_host_vms: list[Part] = field(default_factory=list)
    #: parts no host has room for: (part, why)
    unplaced: list[tuple[Part, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.main_host_vms and not self.unplaced

    def summary(self) -> str:
        lines = [f"drain {self.host}: {len(self.moves)} part move(s)"]
        for m in self.moves:
            lines.append(f"  {m.vm} ({m.main_host}:{m.path}): {m.pages} pages "
                         f"{m.source} -> {m.dest}")
        for p in self.main_host_vms:
            lines.append(f"  {p.vm}: {self.host} is its main host: needs the main-host move")
        for p, why in self.unplaced:
            lines.append(f"  {p.vm}: part on {self.host} not placed: {why}")
        return "\n".join(lines)


def plan_drain(host: str, parts: Iterable[Part], free_pages: dict[str, int],
               exclude: Collection[str] = ()) -> DrainPlan:
    """Plan moving every part held by ``host``; ``free_pages``: room per candidate host."""
    plan = DrainPlan(host)
    room = dict(free_pages)
    # Largest parts first: they are the hardest to place.
    todo = sorted(parts, key=lambda p: -p.pages_by_host.get(host, 0))
    for part in todo:
        if part.main_host == host:
            plan.main_host_vms.append(part)
            continue
        need = part.pages_by_host.get(host, 0)
        if need <= 0:
            continue
        cands = [h for h, free in room.items()
                 if h not in (host, part.main_host) and h not in exclude and free >= need]
        if not cands:
            plan.unplaced.append((part, f"no host has room for {need} pages "
                                        f"(free: {dict(sorted(room.items()))})"))
            continue
        dest = max(cands, key=lambda h: (part.pages_by_host.get(h, 0) > 0, room[h], h))
        room[dest] -= need
        plan.moves.append(PlannedMove(part.main_host, part.path, part.vm, host, dest, need))
    return plan
