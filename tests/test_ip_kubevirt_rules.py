"""Pure rules of the IP side of KubeVirt: NAD annotations -> a network, networkData merging,
which interfaces are on which NetworkAttachmentDefinition, the address annotation."""

import pytest

from ipam.domain.cluster.kubevirt import SpecError, annotated_addresses, annotation_patch, multus_interfaces, nad_network
from ipam.domain.cluster.networkdata import Addressed, NetworkDataConflict, merge
from ipam.domain.commands import SubnetSpec


def nad(**annotations):
    return {"metadata": {"namespace": "prod", "name": "blue", "resourceVersion": "7",
                         "annotations": {f"ipam.kubevirt.io/{k}": v for k, v in annotations.items()}}}


def test_gateways_and_exclusions_go_to_the_subnet_that_contains_them():
    found = nad_network(nad(subnets="10.0.0.0/24, fd00::/64", gateways="fd00::1, 10.0.0.1",
                            exclude="10.0.0.2-10.0.0.9, fd00::100/120, 10.0.0.200", dns="10.0.0.53"))
    assert found.network == "prod.blue" and found.attachment == "prod/blue" and found.version == "7"
    assert found.subnets == (SubnetSpec(cidr="10.0.0.0/24", gateway="10.0.0.1", exclude=("10.0.0.2-10.0.0.9", "10.0.0.200")),
                             SubnetSpec(cidr="fd00::/64", gateway="fd00::1", exclude=("fd00::100/120",)))
    assert nad_network(nad(subnets="10.0.0.0/24", network="shared")).network == "shared"
    assert nad_network(nad()) is None  # no subnets annotation: not ipam's


@pytest.mark.parametrize("annotations, words", [
    ({"subnets": ""}, "lists no subnet"),
    ({"subnets": "10.0.0.0/33"}, "not a CIDR"),
    ({"subnets": "10.0.0.0/24", "gateways": "10.9.0.1"}, "in none of the subnets"),
    ({"subnets": "10.0.0.0/24", "gateways": "10.0.0.1, 10.0.0.254"}, "two gateways"),
    ({"subnets": "10.0.0.0/24", "exclude": "x-y"}, "not an address"),
])
def test_bad_nad_annotations_name_the_annotation(annotations, words):
    with pytest.raises(SpecError) as e:
        nad_network(nad(**annotations))
    assert "ipam.kubevirt.io/" in e.value.field and words in e.value.reason


def test_fresh_network_data_configures_the_pod_interface_by_dhcp():
    data = merge(None, [Addressed("blue", "02:00:00:00:00:02", ("10.0.0.5/24",), ("10.0.0.1",), ("10.0.0.53",), index=1)],
                 {"eth0": "02:00:00:00:00:01"}, False)
    assert data == {"version": 1, "config": [
        {"type": "physical", "name": "eth0", "mac_address": "02:00:00:00:00:01", "subnets": [{"type": "dhcp"}]},
        {"type": "physical", "name": "eth1", "mac_address": "02:00:00:00:00:02", "subnets": [
            {"type": "static", "address": "10.0.0.5/24", "routes": [{"network": "0.0.0.0/0", "gateway": "10.0.0.1",
                                                                     "metric": 200}],
             "dns_nameservers": ["10.0.0.53"]}]}]}


def test_user_entries_are_kept_merged_or_refused():
    ours = [Addressed("blue", "02:00:00:00:00:02", ("10.0.0.5/24",))]
    by_mac = {"version": 2, "ethernets": {"eth1": {"match": {"macaddress": "02:00:00:00:00:02"}, "mtu": 9000}}}
    merged = merge(by_mac, ours, {}, False)
    assert merged["ethernets"]["eth1"] == {"match": {"macaddress": "02:00:00:00:00:02"}, "mtu": 9000,
                                           "addresses": ["10.0.0.5/24"]}
    same = {"version": 2, "ethernets": {"blue": {"addresses": ["10.0.0.5/24"], "dhcp4": False}}}
    assert merge(same, ours, {}, False)["ethernets"]["blue"]["dhcp4"] is False
    with pytest.raises(NetworkDataConflict, match="ethernets.blue sets addresses"):
        merge({"version": 2, "ethernets": {"blue": {"addresses": ["10.9.9.9/24"]}}}, ours, {}, False)
    with pytest.raises(NetworkDataConflict, match="version 3"):
        merge({"version": 3, "config": []}, ours, {}, False)
    with pytest.raises(NetworkDataConflict, match="not a mapping"):
        merge(["a"], ours, {}, False)


def test_multus_interfaces_resolve_their_attachment():
    vm = {"spec": {"template": {"spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}, {"name": "a", "bridge": {}},
                                              {"name": "b", "bridge": {}}]}},
        "networks": [{"name": "default", "pod": {}}, {"name": "a", "multus": {"networkName": "blue"}},
                     {"name": "b", "multus": {"networkName": "infra/green"}}]}}}}
    assert [(m.name, m.attachment) for m in multus_interfaces(vm, "prod")] == [("a", "prod/blue"), ("b", "infra/green")]


def test_the_address_annotation_is_read_and_written():
    vm = {"metadata": {"annotations": {"ipam.kubevirt.io/ip-addresses": '{"a": ["10.0.0.5"]}'}}}
    assert annotated_addresses(vm) == {"a": ["10.0.0.5"]}
    assert annotation_patch(vm, {"a": ["10.0.0.6"]}) == [
        {"op": "add", "path": "/metadata/annotations/ipam.kubevirt.io~1ip-addresses", "value": '{"a":["10.0.0.6"]}'}]
    assert annotation_patch({"metadata": {}}, {"a": []})[0]["path"] == "/metadata/annotations"
    for bad in ('{"a": "10.0.0.5"}', "[1]", "{nope"):
        with pytest.raises(SpecError):
            annotated_addresses({"metadata": {"annotations": {"ipam.kubevirt.io/ip-addresses": bad}}})
