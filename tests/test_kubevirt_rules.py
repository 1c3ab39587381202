"""Which VM interfaces get a MAC (KubeMacPool's rules), the JSONPatch, namespace opt-in/out."""

import copy

import pytest

from ipam.domain.cluster.kubevirt import (
    IPAM_LABEL,
    KUBEMACPOOL_LABEL,
    SpecError,
    interfaces_needing_macs,
    mac_patch,
    namespace_allows,
)

VM = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "db-0", "namespace": "prod", "uid": "6c1f"},
    "spec": {"runStrategy": "Always", "template": {"spec": {
        "domain": {"devices": {"interfaces": [
            {"name": "default", "masquerade": {}},
            {"name": "storage", "bridge": {}},
            {"name": "backend", "bridge": {}, "macAddress": "02:00:00:00:00:09"},
            {"name": "vf", "sriov": {}},
        ]}},
        "networks": [
            {"name": "default", "pod": {}},
            {"name": "storage", "multus": {"networkName": "prod/storage"}},
            {"name": "backend", "multus": {"networkName": "prod/backend"}},
            {"name": "vf", "multus": {"networkName": "prod/sriov"}},
        ],
    }}},
}


def test_pod_masquerade_and_every_multus_interface_need_a_mac():
    needs = interfaces_needing_macs(VM)
    assert [(n.index, n.name, n.network, n.requested_mac) for n in needs] == [
        (0, "default", "pod", None), (1, "storage", "multus", None),
        (2, "backend", "multus", "02:00:00:00:00:09"), (3, "vf", "multus", None)]


def test_pod_bridge_binding_and_unmatched_interfaces_are_left_alone():
    vm = copy.deepcopy(VM)
    vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0] = {"name": "default", "bridge": {}}
    vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].append({"name": "ghost", "bridge": {}})
    assert [n.name for n in interfaces_needing_macs(vm)] == ["storage", "backend", "vf"]


def test_patch_sets_only_missing_macs():
    needs = interfaces_needing_macs(VM)
    patch = mac_patch({0: "02:00:00:00:00:01", 1: "02:00:00:00:00:02", 2: "02:00:00:00:00:09", 3: "02:00:00:00:00:03"}, needs)
    assert patch == [
        {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/0/macAddress", "value": "02:00:00:00:00:01"},
        {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/macAddress", "value": "02:00:00:00:00:02"},
        {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/3/macAddress", "value": "02:00:00:00:00:03"},
    ]


@pytest.mark.parametrize("vm,field", [
    ({"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": "x"}}}}}}, "interfaces"),
    ({"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [{}]}}, "networks": []}}}}, "interfaces[0]"),
    ({"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [{"name": "a", "masquerade": {}, "macAddress": 5}]}},
                                     "networks": [{"name": "a", "pod": {}}]}}}}, "macAddress"),
    ({"spec": "nope"}, "spec.template.spec"),
])
def test_malformed_vms_name_the_field(vm, field):
    with pytest.raises(SpecError) as e:
        interfaces_needing_macs(vm)
    assert field in e.value.field


def test_vm_without_template_needs_nothing():
    assert interfaces_needing_macs({"spec": {}}) == []


@pytest.mark.parametrize("labels,opt_in,allowed", [
    ({}, False, True), ({}, True, False),
    ({IPAM_LABEL: "allocate"}, True, True), ({KUBEMACPOOL_LABEL: "allocate"}, True, True),
    ({IPAM_LABEL: "ignore"}, False, False), ({KUBEMACPOOL_LABEL: "ignore"}, False, False),
    ({IPAM_LABEL: "allocate", KUBEMACPOOL_LABEL: "ignore"}, False, False),
    (None, False, True),
])
def test_namespace_labels(labels, opt_in, allowed):
    assert namespace_allows(labels, opt_in) is allowed
