"""What the engine learns from the agents: the split VMs (``parts`` of every known
host), free room of the sub-host stores (``agent_stats``), fabric endpoints."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import oslo_messaging as messaging

from nova_ipmigrate import exception
from nova_ipmigrate.migration.drain import Part, plan_drain

LOG = logging.getLogger(__name__)

#: errors of an agent call that say nothing about the request: try again later
TRANSIENT: tuple[type[BaseException], ...] = (messaging.MessagingTimeout,
                                              messaging.MessageDeliveryFailure,
                                              exception.Unavailable)


def describe(exc: BaseException) -> str:
    if isinstance(exc, exception.IPMigrateException):
        return exc.format_message()
    if isinstance(exc, messaging.RemoteError):
        return f"{exc.exc_type}: {exc.value}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Inventory:
    def __init__(self, agents: Any, hosts: Iterable[str], ctxt: Any) -> None:
        self.agents = agents
        self.hosts = list(dict.fromkeys(hosts))
        self.ctxt = ctxt

    def known(self, host: str, what: str = "host") -> None:
        if host not in self.hosts:
            raise exception.Invalid(
                f"{what} {host!r} is not a known host (known: {', '.join(self.hosts) or 'none'})",
                reason=f"unknown host {host!r}")

    def _reports(self, hosts: Iterable[str], unreachable: dict[str, str]
                 ) -> Iterator[dict[str, Any]]:
        """The split VMs of each host in turn (``main_host`` set); a host that does
        not answer is recorded in ``unreachable`` (host -> why) and skipped."""
        for h in hosts:
            try:
                reply = self.agents.parts(self.ctxt, h)
            except Exception as exc:  # noqa: BLE001 - a host that does not answer
                LOG.warning("parts of %s: %s", h, describe(exc))
                unreachable[h] = describe(exc)
                continue
            for entry in reply.get("vms", []):
                entry = dict(entry)
                entry.setdefault("main_host", h)
                yield entry

    def entries(self, hosts: Iterable[str] | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The split VMs the hosts are the main host of, and the hosts that did not
        answer (host -> why)."""
        unreachable: dict[str, str] = {}
        out = list(self._reports(self.hosts if hosts is None else hosts, unreachable))
        return out, unreachable

    def find_vm(self, vm: str) -> dict[str, Any]:
        """The VM's entry from its main host (hosts asked in turn, up to the first that
        reports it)."""
        unreachable: dict[str, str] = {}
        for entry in self._reports(self.hosts, unreachable):
            if str(entry.get("vm")) == vm:
                return entry
        extra = (f" (hosts that did not answer: {', '.join(sorted(unreachable))})"
                 if unreachable else "")
        raise exception.NotFound(f"no known host is the main host of a split VM {vm}{extra}",
                                 reason=f"VM {vm}")

    def free_pages(self, hosts: Iterable[str], reserved: dict[str, int] | None = None
                   ) -> dict[str, int]:
        """Free pages of the hosts' sub-host stores (less ``reserved``); hosts that do
        not answer are left out."""
        free: dict[str, int] = {}
        for h in hosts:
            try:
                sub = self.agents.agent_stats(self.ctxt, h)["substore"]
            except Exception as exc:  # noqa: BLE001
                LOG.warning("agent_stats of %s: %s", h, describe(exc))
                continue
            free[h] = (int(sub["capacity_pages"]) - int(sub["used_pages"])
                       - (reserved or {}).get(h, 0))
        return free

    def endpoint(self, host: str) -> dict[str, Any]:
        try:
            ep = self.agents.endpoint(self.ctxt, host)
        except Exception as exc:  # noqa: BLE001
            raise exception.Unavailable(f"the agent on {host} does not answer: "
                                        f"{describe(exc)}", reason=host) from exc
        return {"name": str(ep["name"]), "address": str(ep["address"]),
                "port": int(ep["port"])}

    def choose_destination(self, entry: dict[str, Any], source: str,
                           reserved: dict[str, int], exclude: Collection[str] = ()) -> str:
        """A destination for ``source``'s part of the VM, as a host drain would pick it."""
        part = Part.from_report(entry)
        cands = [h for h in self.hosts if h not in (source, part.main_host)
                 and h not in exclude]
        free = self.free_pages(cands, reserved)
        plan = plan_drain(source, [part], free, exclude=exclude)
        if not plan.moves:
            why = plan.unplaced[0][1] if plan.unplaced else "no candidate host"
            raise exception.InsufficientCapacity(
                f"no destination for the part of {part.vm} on {source}: {why}",
                reason=why)
        return plan.moves[0].dest
