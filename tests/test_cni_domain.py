"""The pure parts the node side reads: network-selection annotations, virt-launcher interface names,
Whereabouts-style sections, CNI_ARGS and results in each version."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.cni.protocol import CniError, cni_args, result, result_addresses
from ipam.domain.cluster import multus
from ipam.domain.cluster.cniconf import ConfigError, nad_config, network_name, whereabouts_subnets
from ipam.domain.ip import build_subnet

from .kubevirt import hashed_interface

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
elements = st.fixed_dictionaries({"name": names}, optional={
    "namespace": names, "interface": names, "mac": st.sampled_from(["02:00:00:00:00:01", "0a:bb:cc:dd:ee:ff"]),
    "ipam-claim-reference": names, "ips": st.just(["10.0.0.5/24"])})


@given(st.lists(elements, max_size=8), names)
def test_an_annotation_written_back_reads_the_same(items, namespace):
    parsed = multus.parse_selections(json.dumps(items), namespace)
    macs = {s.index: f"02:00:00:00:01:{s.index:02x}" for s in parsed}
    again = multus.parse_selections(multus.selections_json(parsed, macs), "elsewhere")
    assert [(s.namespace, s.name, s.interface, s.claim) for s in again] == [
        (s.namespace, s.name, s.interface, s.claim) for s in parsed]
    assert [s.mac for s in again] == [macs[s.index] for s in parsed]
    assert [s.element.get("ips") for s in again] == [i.get("ips") for i in items]  # what ipam does not read stays
    assert [s.interface for s in parsed] == [i.get("interface") or f"net{n}" for n, i in enumerate(items, 1)]


def test_the_short_form_and_what_is_refused():
    short = multus.parse_selections("blue, other/green@eth3 ,red", "team")
    assert [(s.attachment, s.interface) for s in short] == [("team/blue", "net1"), ("other/green", "eth3"),
                                                            ("team/red", "net3")]
    for text, field in (("[{}]", "[0]"), ('[{"name": "a", "mac": 5}]', "[0].mac"), ("[1", "networks]"),
                        ('{"name": "a"}', "networks]"), ("a,,b", "networks]")):
        with pytest.raises(multus.SelectionError) as refused:
            multus.parse_selections(text, "team")
        assert refused.value.field.endswith(field), (text, refused.value)


def test_a_launcher_interface_is_found_by_its_hashed_or_ordinal_name():
    vmi = {"metadata": {"namespace": "prod"}, "spec": {"networks": [
        {"name": "default", "pod": {}}, {"name": "blue", "multus": {"networkName": "blue-net"}},
        {"name": "green", "multus": {"networkName": "other/green-net"}}]}}
    hashed = [multus.Selection(0, "prod", "blue-net", hashed_interface("blue")),
              multus.Selection(1, "other", "green-net", hashed_interface("green"))]
    assert multus.launcher_interface(vmi, hashed, hashed_interface("green")) == "green"
    assert multus.launcher_interface(vmi, hashed, "pod" + hashed_interface("blue")[:7]) == "blue"  # older releases
    ordinal = multus.parse_selections('[{"name": "blue-net"}, {"name": "green-net", "namespace": "other"}]', "prod")
    assert multus.launcher_interface(vmi, ordinal, "net2") == "green"
    assert multus.launcher_interface(vmi, ordinal, "net7") is None


def test_whereabouts_ranges_become_subnets_that_hand_out_what_whereabouts_would():
    (subnet,) = whereabouts_subnets({"range": "192.168.2.225/28", "exclude": ["192.168.2.229/30"]})
    built = build_subnet("n", 0, subnet["cidr"], None, subnet["exclude"])
    usable = [str(a) for a in ipaddress.ip_network("192.168.2.224/28").hosts() if built.why_not(int(a)) is None]
    # an exclusion is the whole CIDR its address is in, as Whereabouts' net.IPNet.Contains has it: .228-.231
    assert usable[:4] == ["192.168.2.225", "192.168.2.226", "192.168.2.227", "192.168.2.232"]
    (bounded,) = whereabouts_subnets({"range": "10.0.0.0/24", "range_start": "10.0.0.10", "range_end": "10.0.0.20",
                                      "gateway": "10.0.0.1"})
    built = build_subnet("n", 0, bounded["cidr"], bounded.get("gateway"), bounded["exclude"])
    usable = [str(a) for a in ipaddress.ip_network("10.0.0.0/24").hosts() if built.why_not(int(a)) is None]
    assert usable == [f"10.0.0.{i}" for i in range(10, 21)] and bounded["gateway"] == "10.0.0.1"
    (dashed,) = whereabouts_subnets({"range": "10.1.0.5-10.1.0.7/24"})
    assert dashed["exclude"] == ["10.1.0.0-10.1.0.4", "10.1.0.8-10.1.0.255"]
    dual = whereabouts_subnets({"ipRanges": [{"range": "10.2.0.0/24"}, {"range": "fd00:2::/64"}], "gateway": "fd00:2::1"})
    assert [(s["cidr"], s.get("gateway")) for s in dual] == [("10.2.0.0/24", None), ("fd00:2::/64", "fd00:2::1")]
    assert whereabouts_subnets({"type": "ipam-cni"}) == []
    for section, field in (({"range": "10.0.0.0"}, "ipam.range"), ({"range": "10.0.0.300/24"}, "ipam"),
                           ({"range": "10.0.0.0/24", "range_start": "10.0.1.1"}, "ipam"),
                           ({"ipRanges": "x"}, "ipam.ipRanges"), ({"gateway": "x"}, "ipam.gateway")):
        with pytest.raises(ConfigError) as refused:
            whereabouts_subnets(section)
        assert refused.value.field == field, section


def test_the_network_a_configuration_names_and_nads_that_delegate_to_ipam_cni():
    assert network_name({"name": "conf"}, {"network": "n"}) == "n"
    assert network_name({"name": "conf"}, {"network_name": "wb"}) == "wb"
    assert network_name({"name": "conf"}, {}) == "conf"
    chained = {"spec": {"config": json.dumps({"cniVersion": "1.0.0", "name": "c", "plugins": [
        {"type": "bridge", "ipam": {"type": "ipam-cni", "range": "10.0.0.0/24"}}, {"type": "tuning"}]})}}
    conf, section = nad_config(chained)
    assert conf["name"] == "c" and section["range"] == "10.0.0.0/24"
    assert nad_config({"spec": {"config": json.dumps({"type": "bridge", "ipam": {"type": "whereabouts"}})}}) is None
    with pytest.raises(ConfigError):
        nad_config({"spec": {"config": "{ipam-cni"}})


def test_results_in_each_version_and_cni_args():
    ips = [("10.0.0.5/24", "10.0.0.1"), ("fd00::5/64", None)]
    old, new = result("0.3.1", ips, [], {}), result("1.0.0", ips, [{"dst": "0.0.0.0/0"}], {"nameservers": ["1.1.1.1"]})
    assert old["ips"] == [{"version": "4", "address": "10.0.0.5/24", "gateway": "10.0.0.1"},
                          {"version": "6", "address": "fd00::5/64"}]
    assert new["ips"][0] == {"address": "10.0.0.5/24", "gateway": "10.0.0.1"} and new["routes"] and new["dns"]
    assert result_addresses(new) == {"10.0.0.5", "fd00::5"}
    assert cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b") == {
        "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "a", "K8S_POD_NAME": "b"}
    with pytest.raises(CniError) as refused:
        cni_args("K8S_POD_NAME")
    assert refused.value.code == 4
