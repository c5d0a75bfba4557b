"""The agents' truth against placement's books.

For every split VM a main host reports: each host holding pages of it must hold
MEMORY_MB of the instance consumer (at least the pages it holds: an entitlement
is never smaller than what sits there), no other host may hold memory of it, and
the main host must hold its VCPU. Nothing is changed; every mismatch is one drift
entry (logged as a warning), for an operator or ``nova-manage placement audit``
reading (see ``doc/nova-integration.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from nova_ipmigrate.accounting.placement import MEMORY_MB, Ledger
from nova_ipmigrate.accounting.scheduling import Providers

LOG = logging.getLogger(__name__)
PAGE = 4096
MIB = 1 << 20


def drift_of(vm: str, main: str, pages_by_host: dict[str, int],
             allocs: dict[str, dict[str, int]], rp_of: dict[str, str]) -> list[dict[str, Any]]:
    """The mismatches of one VM (``rp_of``: host -> provider of every known host)."""
    host_of = {rp: h for h, rp in rp_of.items()}
    out: list[dict[str, Any]] = []

    def add(host: str, why: str, **kw: Any) -> None:
        out.append({"vm": vm, "host": host, "why": why, **kw})

    for host, pages in sorted(pages_by_host.items()):
        rp = rp_of.get(host)
        need = -(-int(pages) * PAGE // MIB)
        have = allocs.get(rp, {}).get(MEMORY_MB, 0) if rp else 0
        if pages > 0 and have < need:
            add(host, "pages without (enough) memory allocated", pages=int(pages),
                allocated_mb=have, needed_mb=need)
    for rp, res in sorted(allocs.items()):
        holder = host_of.get(rp)
        if res.get(MEMORY_MB, 0) and holder != main and \
                pages_by_host.get(holder or "", 0) <= 0:
            add(holder or rp, "memory allocated where no part is",
                allocated_mb=res[MEMORY_MB])
    main_rp = rp_of.get(main)
    if main_rp is not None and not allocs.get(main_rp, {}).get("VCPU"):
        cpu = [host_of.get(rp, rp) for rp, r in allocs.items() if r.get("VCPU")]
        add(main, "the main host holds no VCPU of the instance", vcpu_on=cpu)
    return out


def reconcile(ctxt: Any, entries: Iterable[dict[str, Any]], hosts: Iterable[str],
              ledger: Ledger, providers: Providers) -> list[dict[str, Any]]:
    hosts = list(hosts)
    rp_of = {}
    for h in hosts:
        try:
            rp_of[h] = providers.rp(ctxt, h)
        except Exception as exc:  # noqa: BLE001 - a host Nova does not know
            LOG.warning("reconcile: no provider for %s: %s", h, exc)
    drift: list[dict[str, Any]] = []
    for e in entries:
        vm = str(e["vm"])
        pages = {str(h): int(n) for h, n in dict(e.get("pages_by_host") or {}).items()}
        allocs = ledger.allocations(ctxt, vm)
        drift += drift_of(vm, str(e["main_host"]), pages, allocs, rp_of)
    for d in drift:
        LOG.warning("placement drift: %s", d)
    return drift
