"""What ipam writes into a VM's cloud-init volume, rendered by the real cloud-init (Debian's, ``cloud-init devel
net-convert``) into netplan, systemd-networkd and sysconfig: addresses, routes, DNS and MAC matching come out
as leased, in every form ipam writes (version 2, version 1 as the KubeVirt user guide writes it, OpenStack
network_data.json for a ConfigDrive), and what the user wrote is kept."""

from __future__ import annotations

import json

import jsonpatch
import pytest
import yaml

from ipam.domain.cluster.cloudinit import cloud_init_patch, written_addresses
from ipam.domain.cluster.networkdata import Addressed

from .guest import RENDERERS, net_convert
from .kubevirt import vm_manifest

POD_MAC, BLUE_MAC = "02:00:00:00:00:01", "02:00:00:00:00:10"
BLUE = Addressed("blue", BLUE_MAC, ("10.40.0.5/24", "fd00:40::5/64"), ("10.40.0.1", "fd00:40::1"), ("10.40.0.53",), index=1)
# The KubeVirt user guide's own cloudInitNoCloud example: version 1, under a network: key, DHCP on eth0.
USER_GUIDE_V1 = "network:\n  version: 1\n  config:\n  - type: physical\n    name: eth0\n    subnets:\n    - type: dhcp\n"


def with_volume(kind: str, **source) -> dict:
    vm = vm_manifest("guest", multus=("blue",), macs={"default": POD_MAC, "blue": BLUE_MAC})
    vm["spec"]["template"]["spec"]["volumes"].append({"name": "cloudinit", kind: {"userData": "#cloud-config\n", **source}})
    return vm


def patched_network_data(vm: dict) -> tuple[str, bool]:
    ops, warning = cloud_init_patch(vm, [BLUE], {"eth0": POD_MAC})  # the pod NIC, named as the webhook names it
    assert warning is None
    patched = jsonpatch.apply_patch(vm, ops)
    for volume in patched["spec"]["template"]["spec"]["volumes"]:
        for kind in ("cloudInitNoCloud", "cloudInitConfigDrive"):
            if kind in volume:
                return volume[kind]["networkData"], kind == "cloudInitConfigDrive"
    raise AssertionError("no cloud-init volume")


def check_blue(files: dict[str, str], renderer: str) -> None:
    """The rendered configuration of the blue NIC: its MAC, both addresses, DNS, and (v2/v1) the gateway routes."""
    text = "\n".join(files.values())
    assert BLUE_MAC in text.lower(), renderer
    assert "10.40.0.5" in text and "fd00:40::5/64" in text, renderer
    assert "10.40.0.53" in text, renderer


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_fresh_network_data_renders_addresses_routes_dns_and_dhcp_on_the_pod_nic(tmp_path, renderer):
    """ipam writes version 1 when nobody wrote networkData: cloud-init renders its routes' metric and ::/0 as written
    for every renderer (version 2's come out without the metric, and ::/0 as ::/64, for networkd and sysconfig)."""
    vm = vm_manifest("guest", multus=("blue",), macs={"default": POD_MAC, "blue": BLUE_MAC})
    text, drive = patched_network_data(vm)
    assert not drive and yaml.safe_load(text)["version"] == 1
    files = net_convert(text, "yaml", renderer, tmp_path)
    check_blue(files, renderer)
    rendered = "\n".join(files.values())
    if renderer == "netplan":
        (plan,) = [yaml.safe_load(t) for p, t in files.items() if p.startswith("etc/netplan")]
        eth = plan["network"]["ethernets"]
        assert eth["eth0"]["dhcp4"] is True and eth["eth0"]["match"]["macaddress"] == POD_MAC
        assert eth["eth1"]["match"]["macaddress"] == BLUE_MAC
        assert {(r["to"], r["via"], r["metric"]) for r in eth["eth1"]["routes"]} == \
            {("0.0.0.0/0", "10.40.0.1", 200), ("::/0", "fd00:40::1", 200)}
    elif renderer == "networkd":
        assert "Gateway=10.40.0.1" in rendered and "Destination=::/0" in rendered and "DHCP=ipv4" in rendered
        assert rendered.count("Metric=200") == 2
    else:
        assert "GATEWAY=10.40.0.1" in rendered and "METRIC=200" in rendered and "BOOTPROTO=dhcp" in rendered


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_the_user_guides_version_1_is_merged_in_its_own_form(tmp_path, renderer):
    text, _ = patched_network_data(with_volume("cloudInitNoCloud", networkData=USER_GUIDE_V1))
    merged = yaml.safe_load(text)["network"]
    assert merged["version"] == 1
    eth0, blue = merged["config"]
    assert eth0 == {"type": "physical", "name": "eth0", "subnets": [{"type": "dhcp"}]}  # the user's, untouched
    assert blue["mac_address"] == BLUE_MAC
    files = net_convert(text, "yaml", renderer, tmp_path)
    check_blue(files, renderer)
    rendered = "\n".join(files.values())
    assert ("10.40.0.1" in rendered) and ("fd00:40::1" in rendered), renderer  # the gateways, as routes


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_a_config_drive_gets_openstack_network_data_json(tmp_path, renderer):
    text, drive = patched_network_data(with_volume("cloudInitConfigDrive"))
    data = json.loads(text)  # what KubeVirt writes to openstack/latest/network_data.json
    assert drive and {link["ethernet_mac_address"] for link in data["links"]} == {POD_MAC, BLUE_MAC}
    assert {"type": "dns", "address": "10.40.0.53"} in data["services"]
    files = net_convert(text, "network_data.json", renderer, tmp_path, macs={"eth0": POD_MAC, "eth1": BLUE_MAC})
    check_blue(files, renderer)
    assert "10.40.0.1" not in "\n".join(files.values())  # no default route: the format has no metric


def test_a_config_drive_keeps_what_the_user_wrote_and_their_address_is_claimed(tmp_path):
    theirs = {"links": [{"id": "tap-blue", "type": "phy", "ethernet_mac_address": BLUE_MAC}],
              "networks": [{"id": "n", "link": "tap-blue", "type": "ipv4", "ip_address": "10.40.0.5",
                            "netmask": "255.255.255.0"},
                           {"id": "n6", "link": "tap-blue", "type": "ipv6", "ip_address": "fd00:40::5/64"}],
              "services": [{"type": "dns", "address": "1.1.1.1"}]}
    vm = with_volume("cloudInitConfigDrive", networkData=json.dumps(theirs))
    assert written_addresses(vm, [("blue", BLUE_MAC, 1)]) == {"blue": ["10.40.0.5", "fd00:40::5"]}
    text, _ = patched_network_data(vm)
    data = json.loads(text)
    assert data["links"] == theirs["links"] and data["networks"] == theirs["networks"]
    assert [s["address"] for s in data["services"]] == ["1.1.1.1", "10.40.0.53"]
    check_blue(net_convert(text, "network_data.json", "netplan", tmp_path, macs={"eth1": BLUE_MAC}), "netplan")


@pytest.mark.parametrize("data, expected", [
    ({"version": 2, "ethernets": {"eth1": {"addresses": ["192.0.2.20/24"]}}}, ["192.0.2.20"]),  # eth<N>: the N-th NIC
    ({"version": 2, "ethernets": {"x": {"match": {"macaddress": BLUE_MAC.upper()}, "addresses": ["192.0.2.21/24"]}}},
     ["192.0.2.21"]),
    ({"version": 1, "config": [{"type": "physical", "name": "blue", "subnets": [{"type": "static", "address": "192.0.2.22",
                                                                                 "netmask": "255.255.255.0"}]}]},
     ["192.0.2.22"]),
    ({"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}, None),
])
def test_addresses_the_user_wrote_for_an_interface_are_found(data, expected):
    vm = with_volume("cloudInitNoCloud", networkData=yaml.safe_dump(data))
    found = written_addresses(vm, [("blue", BLUE_MAC, 1)])
    assert found.get("blue") == expected
