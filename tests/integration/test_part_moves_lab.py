"""Part moves of a split VM in the lab: 4 hosts, the 512 MiB oracle guest split 3-way,
every operation requested of ``ipmigrate-engine`` over a real RabbitMQ.

The lab's control plane (``lab/control.py``: broker and engine on h1) runs the
split and every operation. The guest runs on h1 with h2 and h3 as its sub-hosts
(25% resident on h1), h4 is a spare. While the oracle writes and verifies its
memory all the time, the scenarios of ``lab/scenario.py`` move parts: h2's
part to h4, an operator abort mid-transfer, a destination agent killed
mid-transfer (``sub_host_moves``); the operator's workflow through the
``openstack`` CLI and ``ipmigrate-api`` (``operator_cli``: part moves, an abort,
bad requests, a drain of h3 and the reintegration of the whole VM onto h1); the
engine killed and restarted mid-move (resumed), an abort across an engine restart
and a destination dying while the engine is down (rolled back), RabbitMQ killed
and restarted mid-move, and bad requests (``engine_failures``). The CLI test runs
the guest as a libvirt domain (libvirtd inside h1). Each step checks where the
pages are; the guest must end with 0 mismatches.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.lab import libvirt, rabbitmq, scenario
from nova_ipmigrate.lab.multihost import SplitParams, run_split
from nova_ipmigrate.lab.singlehost import RAM_PATH
from tests.integration.conftest import QUICK, cache_dir

pytestmark = pytest.mark.integration


def _prefix() -> str:
    return f"ipp{os.getpid() % 10000}"


def _run(workdir: Path, body: Any, seconds: int | None = None,
         **params: Any) -> tuple[Any, dict[str, Any]]:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("nsenter") is None:
        pytest.skip("needs qemu-system-x86_64 and nsenter")
    if not Path(rabbitmq.SERVER).exists():
        pytest.skip("rabbitmq-server is not installed (bindep.txt)")
    p = SplitParams(workdir=workdir, cache_dir=cache_dir(), ram_mb=512, resident_limit_pct=25,
                    seconds=seconds or (45 if QUICK else 90), hosts=4, sub_hosts=2,
                    lab_prefix=_prefix(), scenario=body,
                    scenario_after_s=5, fetch_timeout=5, page_store_mb=1024,
                    control_plane=True, **params)
    r, extra = run_split(p)
    print(r.summary(), extra["pages_by_host"], extra.get("scenario"))
    assert r.ok, r.verdict
    assert r.mismatches == 0 and r.verified > 10_000
    files = r.memfs["files"]   # the VM's RAM file on its main host at the end
    f = files.get(RAM_PATH) or next(iter(files.values()))
    assert f["lost"] == 0 and not f["broken"], f
    return r, extra


def test_sub_host_partial_migration_abort_and_killed_destination(workdir: Path) -> None:
    r, extra = _run(workdir, scenario.sub_host_moves)
    s = extra["scenario"]
    mig = s["partial_migration"]["progress"]
    assert mig["switched"] > 1000, mig
    # the guest kept paging during the move: pages left and reached the source
    assert s["abort"]["state"] == "aborted"
    assert s["killed_destination"]["state"] == "failed"
    assert r.events["scenario"]["t"] < r.samples[-1].t, "the scenario ran while the VM ran"


def test_operator_workflow_through_the_openstack_cli(workdir: Path) -> None:
    """The operator's maintenance of h2 and h3 with the real ``openstack`` CLI
    (python-openstackclient and this package's plugin) against a real
    ``ipmigrate-api`` on h1 in front of the engine: ``server migrate --partial h2
    --host h4 --wait`` with its progress bar, list/show, an abort, bad requests
    (nothing changed), ``compute host drain h3``, ``server reintegrate``,
    ``server memory show``. The guest runs as a libvirt domain of a libvirtd inside
    h1 (``lab/libvirt.py``), its RAM a shared file on h1's memfs."""
    if not libvirt.available():
        pytest.skip("needs libvirt-daemon-system (bindep.txt)")
    r, extra = _run(workdir, scenario.operator_cli, seconds=100 if QUICK else 150,
                    libvirt=True, api=True)
    s = extra["scenario"]
    assert s["partial_migration"]["progress_lines"] >= 1
    assert s["partial_migration"]["progress"]["pages_total"] > 1000
    assert set(s["refused"]) >= {"non-admin", "unknown server", "a host holding no part"}
    assert s["abort"]["state"] == "aborted"
    assert len(s["drain"]["children"]) >= 1
    assert s["commands"] >= 20
    assert r.events["scenario"]["t"] < r.samples[-1].t, "the scenario ran while the VM ran"
    g = extra["guest"]
    backend = next(a for a in g["qemu_cmdline"] if '"memory-backend-file"' in a)
    assert '"share":true' in backend and f'/{RAM_PATH}"' in backend, backend
    assert g["host_uuid"] == libvirt.host_uuid(f"{_prefix()}-h1")


def test_engine_and_broker_failures_under_running_moves(workdir: Path) -> None:
    _r, extra = _run(workdir, scenario.engine_failures, seconds=100 if QUICK else 150,
                     substore_mb_by_host={"h4": 64})
    s = extra["scenario"]
    print({k: v for k, v in s.items() if k == "bad_requests" or k.endswith("_s")})
    assert set(s["bad_requests"]) >= {"unknown_vm", "not_holding", "dest_is_source",
                                      "no_capacity", "malformed_rpc"}
    assert s["resumed"]["state"] == "done"
    assert s["aborted_across_restart"]["state"] == "aborted"
    assert s["broker_restarted"]["state"] == "done"
    assert s["rolled_back"]["state"] == "failed"
    assert s["reintegration"]["state"] == "done"
    # every request the engine accepted ended; nothing is left active
    assert all(o["state"] in ("done", "failed", "aborted") for o in extra["engine_operations"])
    # the notifications of each ending, also those sent by a restarted engine; the
    # broker restart may lose notifications in flight (they are not persistent)
    last = {d["id"]: t for t, d in extra["notifications"]}
    assert last.get(s["aborted_across_restart"]["id"]) == "ipmigrate.operation.abort"
    assert last.get(s["rolled_back"]["id"]) == "ipmigrate.operation.error"
    assert last.get(s["resumed"]["id"]) == "ipmigrate.operation.end"


@pytest.mark.xfail(strict=False, reason=(
    "known bug, 3 failures in 3 runs on 2026-12-02, one on 53973e5: after the main-host "
    "moves, the new main host's directory names the old main host h1 as holder of pages "
    "h1 does not have; the guest's page-in of one breaks the instance and the pull from "
    "h1 fails after 300 s. A data-loss race in the main-host move's hand-over, to fix "
    "before this test counts again"))
def test_main_host_moves_killed_destination_reintegration_and_reboot(workdir: Path) -> None:
    """The main host moves through libvirt with x-ignore-shared (every host runs its
    own libvirtd with the hook installed): a killed destination agent, then a killed
    destination libvirtd, leave the VM on h1; h1 -> h4 moves the vCPUs and h1's
    resident pages; reintegration onto h1 (not the main host then) moves the main
    host back and every part in parallel; h1 -> h4 again the way Nova's driver runs
    it (the agents' main_prepare_source/main_finish_source around a libvirt migration
    they do not run); then the guest reboots."""
    if not libvirt.available():
        pytest.skip("needs libvirt-daemon-system (bindep.txt)")
    _r, extra = _run(workdir, scenario.main_host_moves, seconds=85 if QUICK else 150,
                     libvirt=True, libvirt_on_reboot="restart")
    s = extra["scenario"]
    h1, h4 = f"{_prefix()}-h1", f"{_prefix()}-h4"
    for failure in ("killed_agent", "killed_libvirtd"):
        assert s[failure]["op"]["state"] == "failed", s[failure]
        assert "goes on at" in s[failure]["op"]["fault"], s[failure]
        assert h4 not in s[failure]["layout"]
    mig = s["main_host_migration"]
    assert mig["moved"] and mig["pull"]["state"] == "done"
    assert 0 < mig["downtime_ms"] < 2000, mig["downtime_ms"]   # TCG, 2 cores: loose
    assert h1 not in mig["layout"] and mig["layout"][h4] > 0, mig["layout"]
    back = s["reintegration"]
    assert back["moved"] and set(back["layout"]) == {h1}, back["layout"]
    driver = s["driver_main_move"]
    assert driver["pull"]["state"] == "done", driver
    assert h1 not in driver["layout"] and driver["layout"][h4] > 0, driver["layout"]
    assert extra["guest"]["hosts"] == ["h1", "h4", "h1", "h4"]
    # the guest came up again after its reset on h4 and ran the oracle to its end
    serial = (workdir / "serial.log").read_text(errors="replace")
    assert serial.count("ORACLE START") == 2, "the guest did not reboot"
    kinds = [o["kind"] for o in extra["engine_operations"]]
    assert kinds.count("main_host_migration") == 4, kinds
