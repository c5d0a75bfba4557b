"""Part requests on Nova's own RequestSpec, the scheduler's claims, host providers."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any
from unittest import mock

import oslo_messaging as messaging
import pytest
from nova import exception as nova_exc
from nova import objects
from nova.scheduler import utils as scheduler_utils
from oslo_utils.fixture import uuidsentinel as uuids

from nova_ipmigrate import exception
from nova_ipmigrate.accounting import scheduling
from nova_ipmigrate.accounting.scheduling import Claim, Providers, Scheduler, part_request
from nova_ipmigrate.virt import splitspec
from tests.nova.unit.accounting import ctx, flavor, request_spec

EXTRA = {"ipmigrate:split_memory": "true", "ipmigrate:sub_hosts": "2",
         "resources:CUSTOM_X": "1", "resources1:CUSTOM_Y": "2", "trait:HW_CPU_X86_AVX": "required",
         "hw:numa_nodes": "1", "hw:mem_page_size": "small", "hw:watchdog_action": "reset"}


def _spec(extra: dict[str, str] | None = None, hints: dict[str, Any] | None = None) -> Any:
    return request_spec(flavor(EXTRA if extra is None else extra), hints=hints)


def _resources(req: Any) -> dict[str, int]:
    """What Nova's scheduler asks placement for (``ResourceRequest``)."""
    return dict(scheduler_utils.ResourceRequest.from_request_spec(req).merged_resources())


def test_part_request_is_memory_only() -> None:
    spec = _spec(hints={"group": ["g1"]})
    spec.numa_topology = objects.InstanceNUMATopology(cells=[
        objects.InstanceNUMACell(id=0, cpuset=set(), pcpuset=set(), memory=4096)])
    req = part_request(spec, 1536, op_id="op-1", instance=uuids.instance, purpose="part",
                       ignore_hosts=["main", "subA", "main"], holders=["subA", "subA"])
    assert isinstance(req, objects.RequestSpec)
    assert req.flavor.memory_mb == 1536
    # only the split's own keys: any other extra spec may turn into resources
    assert req.flavor.extra_specs == {"ipmigrate:split_memory": "true",
                                      "ipmigrate:sub_hosts": "2",
                                      "resources:VCPU": "0", "resources:DISK_GB": "0"}
    assert _resources(req) == {"MEMORY_MB": 1536}
    assert req.numa_topology is None
    assert req.num_instances == 1
    assert req.requested_resources == []
    assert list(req.pci_requests.requests) == []
    assert req.ignore_hosts == ["main", "subA"]
    assert req.force_hosts == [] and req.force_nodes == []
    assert req.requested_destination is None
    assert req.scheduler_hints == {splitspec.HINT_PART: ["op-1"],
                                   scheduling.HINT_INSTANCE: [uuids.instance],
                                   scheduling.HINT_HOLDERS: ["subA"],
                                   scheduling.HINT_PURPOSE: ["part"]}
    # survives the trip to nova-scheduler
    back = objects.RequestSpec.obj_from_primitive(req.obj_to_primitive())
    assert _resources(back) == {"MEMORY_MB": 1536}


def test_part_request_leaves_the_instance_spec_alone() -> None:
    spec = _spec(hints={"group": ["g1"]})
    resources = _resources(spec)        # (fills the spec's request_level_params defaults)
    before = spec.obj_to_primitive()["nova_object.data"]
    changes = set(spec.obj_what_changed())
    part_request(spec, 512, op_id="op-1", instance=uuids.instance, purpose="part",
                 ignore_hosts=["main"], dest="subB")
    assert spec.obj_to_primitive()["nova_object.data"] == before
    assert set(spec.obj_what_changed()) == changes
    assert spec.flavor.memory_mb == 4096 and spec.flavor.extra_specs == EXTRA
    assert _resources(spec) == resources
    assert resources["VCPU"] == 2 and resources["CUSTOM_X"] == 1


def test_part_request_to_a_destination() -> None:
    req = part_request(_spec(), 2048, op_id="op-2", instance=uuids.instance,
                       purpose="reintegration", dest="main")
    assert isinstance(req.requested_destination, objects.Destination)
    assert req.requested_destination.host == "main"
    assert req.ignore_hosts is None
    assert req.scheduler_hints[scheduling.HINT_PURPOSE] == ["reintegration"]
    assert req.scheduler_hints[scheduling.HINT_HOLDERS] == []
    assert _resources(req) == {"MEMORY_MB": 2048}


def test_part_request_purpose_checked() -> None:
    with pytest.raises(ValueError, match="purpose"):
        part_request(_spec(), 1, op_id="o", instance=uuids.instance, purpose="boot")


@pytest.mark.parametrize("extra", [{"hw:cpu_policy": "dedicated"},
                                   {"hw:pmem": "4GB"}])
def test_part_request_drops_every_resource_translation(extra: dict[str, str]) -> None:
    req = part_request(_spec({"ipmigrate:split_memory": "true", **extra}), 1024, op_id="o",
                       instance=uuids.instance, purpose="part")
    assert _resources(req) == {"MEMORY_MB": 1024}


# -- Scheduler.claim -----------------------------------------------------------------


class FakeQuery:
    def __init__(self, host: str = "subB", rp: str = uuids.rp_subB) -> None:
        self.calls: list[tuple[Any, Any, list[str], dict[str, Any]]] = []
        self.host, self.rp = host, rp
        self.raises: Exception | None = None

    def select_destinations(self, ctxt: Any, spec: Any, instance_uuids: list[str],
                            **kw: Any) -> Any:
        self.calls.append((ctxt, spec, list(instance_uuids), kw))
        if self.raises is not None:
            raise self.raises
        sel = SimpleNamespace(service_host=self.host, nodename=self.host,
                              compute_node_uuid=self.rp)
        return [[sel]]


@pytest.fixture
def stored_spec() -> Any:
    spec = _spec()
    with mock.patch.object(objects.RequestSpec, "get_by_instance_uuid",
                           return_value=spec) as get:
        yield get


def test_claim(stored_spec: Any) -> None:
    q = FakeQuery()
    c = ctx()
    claim = Scheduler(q).claim(c, uuids.instance, 1536, op_id="op-1", purpose="part",
                               ignore_hosts=["main", "subA"], holders=["subA"])
    stored_spec.assert_called_once_with(c, uuids.instance)
    ((ctxt, req, consumers, kw),) = q.calls
    assert ctxt is c
    assert kw == {"return_objects": True, "return_alternates": False}
    (consumer,) = consumers
    assert str(uuid.UUID(consumer)) == consumer and consumer != uuids.instance
    assert claim == Claim(host="subB", rp=uuids.rp_subB, consumer=consumer, mb=1536)
    assert claim.to_dict() == {"host": "subB", "rp": uuids.rp_subB, "consumer": consumer,
                               "mb": 1536}
    assert _resources(req) == {"MEMORY_MB": 1536}
    assert req.ignore_hosts == ["main", "subA"]
    assert req.scheduler_hints[splitspec.HINT_PART] == ["op-1"]
    # each claim is a fresh consumer
    again = Scheduler(q).claim(c, uuids.instance, 1, op_id="op-2", purpose="part")
    assert again.consumer != consumer


@pytest.mark.parametrize(("dest", "where"), [(None, "on any host"), ("subC", "on subC")])
def test_claim_no_valid_host(stored_spec: Any, dest: str | None, where: str) -> None:
    q = FakeQuery()
    q.raises = nova_exc.NoValidHost(reason="not enough RAM")
    with pytest.raises(exception.InsufficientCapacity,
                       match=f"no room for 1536 MiB of instance {uuids.instance} {where}: "
                             f".*not enough RAM") as err:
        Scheduler(q).claim(ctx(), uuids.instance, 1536, op_id="op-1", purpose="part",
                           dest=dest)
    assert err.value.kwargs["reason"] == (dest or "no host")
    if dest:
        assert q.calls[0][1].requested_destination.host == dest


def test_claim_unknown_instance() -> None:
    q = FakeQuery()
    with mock.patch.object(objects.RequestSpec, "get_by_instance_uuid",
                           side_effect=nova_exc.RequestSpecNotFound(
                               instance_uuid=uuids.instance)):
        with pytest.raises(exception.NotFound, match=f"knows no instance {uuids.instance}"):
            Scheduler(q).claim(ctx(), uuids.instance, 1, op_id="o", purpose="part")
    assert q.calls == []


def test_claim_unreachable_scheduler_passes(stored_spec: Any) -> None:
    q = FakeQuery()
    q.raises = messaging.MessagingTimeout("nova-scheduler does not answer")
    with pytest.raises(messaging.MessagingTimeout):
        Scheduler(q).claim(ctx(), uuids.instance, 1, op_id="o", purpose="part")


# -- Providers -----------------------------------------------------------------------


def _nodes(*rps: str) -> list[Any]:
    return [SimpleNamespace(uuid=rp) for rp in rps]


def test_providers() -> None:
    cell = objects.CellMapping(uuid=uuids.cell1, name="cell1", transport_url="fake://",
                               database_connection="fake://")
    rps = {"main": uuids.rp_main, "subA": uuids.rp_subA}
    with mock.patch.object(objects.HostMapping, "get_by_host",
                           return_value=SimpleNamespace(cell_mapping=cell)) as hm, \
            mock.patch("nova.context.target_cell") as target, \
            mock.patch.object(objects.ComputeNodeList, "get_all_by_host",
                              side_effect=lambda c, h: _nodes(rps[h])):
        target.return_value.__enter__.return_value = "cell-ctxt"
        p = Providers()
        c = ctx()
        assert p.rp(c, "main") == uuids.rp_main
        assert p.rp(c, "main") == uuids.rp_main            # cached
        assert hm.call_count == 1
        target.assert_called_once_with(c, cell)
        assert p.host(c, uuids.rp_subA, ["main", "subA"]) == "subA"
        assert p.host(c, uuids.rp_other, ["main", "subA"]) is None


def test_providers_refusals() -> None:
    with mock.patch.object(objects.HostMapping, "get_by_host",
                           side_effect=nova_exc.HostMappingNotFound(name="nohost")):
        with pytest.raises(exception.NotFound, match="knows no compute host nohost"):
            Providers().rp(ctx(), "nohost")
    with mock.patch.object(objects.HostMapping, "get_by_host",
                           return_value=SimpleNamespace(cell_mapping=None)), \
            mock.patch("nova.context.target_cell"), \
            mock.patch.object(objects.ComputeNodeList, "get_all_by_host",
                              return_value=_nodes(uuids.n1, uuids.n2)):
        with pytest.raises(exception.Invalid, match="two has 2 compute nodes"):
            Providers().rp(ctx(), "two")
