"""Realistic KubeVirt objects and AdmissionReviews shaped like the API server's, for the tests and the bench."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import ssl
import uuid
from pathlib import Path

import jsonpatch
import trustme


def vm_manifest(name: str, namespace: str = "prod", multus: tuple[str, ...] = ("blue", "green"),
                macs: dict[str, str] | None = None, generate_name: bool = False) -> dict:
    """A VM with the pod network (masquerade) and Multus networks on bridge bindings."""
    interfaces = [{"name": "default", "masquerade": {}}] + [{"name": n, "bridge": {}} for n in multus]
    for iface in interfaces:
        if macs and iface["name"] in macs:
            iface["macAddress"] = macs[iface["name"]]
    networks = [{"name": "default", "pod": {}}] + [{"name": n, "multus": {"networkName": f"{n}-net"}} for n in multus]
    meta = {"namespace": namespace, "labels": {"app": name}}
    meta["generateName" if generate_name else "name"] = name
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": meta,
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"kubevirt.io/vm": name}},
                "spec": {
                    "domain": {
                        "cpu": {"cores": 1},
                        "memory": {"guest": "1Gi"},
                        "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}], "interfaces": interfaces},
                    },
                    "networks": networks,
                    "volumes": [{"name": "rootdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:40"}}],
                },
            },
        },
    }


VM_GVR = ("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
POD_GVR = ("", "v1", "Pod", "pods")


def review(obj: dict, operation: str = "CREATE", old: dict | None = None, dry_run: bool = False,
           uid: str | None = None, gvr: tuple[str, str, str, str] = VM_GVR) -> dict:
    gvk = {"group": gvr[0], "version": gvr[1], "kind": gvr[2]}
    gvr = {"group": gvr[0], "version": gvr[1], "resource": gvr[3]}
    options = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}.get(operation, "DeleteOptions")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": obj["metadata"].get("name", ""),
            "namespace": obj["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": obj,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"kind": options, "apiVersion": "meta.k8s.io/v1"},
        },
    }


def apply(obj: dict, response: dict) -> dict:
    """What the API server does with an allowed answer: apply its JSONPatch."""
    if "patch" not in response:
        return copy.deepcopy(obj)
    assert response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(obj, json.loads(base64.b64decode(response["patch"])))


def macs_of(obj: dict) -> dict[str, str]:
    ifaces = obj["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    return {i["name"]: i["macAddress"] for i in ifaces if "macAddress" in i}


class WebhookTls:
    """A CA and a serving certificate for 127.0.0.1, as files (what cert-manager would mount)."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.folder = folder
        self.cert_file = folder / "tls.crt"
        self.key_file = folder / "tls.key"
        self.issue("127.0.0.1")

    def issue(self, *names: str) -> None:
        cert = self.ca.issue_cert(*names)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_file), append=True)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


# --- what KubeVirt makes of a running VM: its VMI and virt-launcher pods ------------------------------


def hashed_interface(network: str) -> str:
    """The pod interface name KubeVirt gives a VM's secondary network (sha256 of its name, 11 hex)."""
    return hashlib.sha256(network.encode()).hexdigest()[:11]


def vmi_of(vm: dict) -> dict:
    meta = vm["metadata"]
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": copy.deepcopy(vm["spec"]["template"]["spec"]), "status": {"phase": "Running"}}


def launcher_pod(vmi: dict, name: str, claims: dict[str, str] | None = None) -> dict:
    """A virt-launcher pod of a VMI: its secondary networks in the annotation, with hashed interface names."""
    meta = vmi["metadata"]
    selections = []
    for n in vmi["spec"]["networks"]:
        if "multus" in n:
            ns, _, nad = n["multus"]["networkName"].rpartition("/")
            element = {"name": nad, "namespace": ns or meta["namespace"], "interface": hashed_interface(n["name"])}
            if claims and n["name"] in claims:
                element["ipam-claim-reference"] = claims[n["name"]]
            selections.append(element)
    return pod_manifest(name, meta["namespace"], selections, labels={"kubevirt.io": "virt-launcher",
                                                                      "vm.kubevirt.io/name": meta["name"]},
                        owner={"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": meta["name"],
                               "uid": meta.get("uid", ""), "controller": True})


def pod_manifest(name: str, namespace: str, networks: list | str | None, labels: dict | None = None,
                 owner: dict | None = None, generate_name: bool = False) -> dict:
    meta = {"namespace": namespace, "labels": labels or {}}
    meta["generateName" if generate_name else "name"] = name
    if networks is not None:
        meta["annotations"] = {"k8s.v1.cni.cncf.io/networks": networks if isinstance(networks, str) else json.dumps(networks)}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}}
