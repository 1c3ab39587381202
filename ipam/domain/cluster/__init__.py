"""Kubernetes objects as ipam reads them, apart from the lease core: KubeVirt VMs and their cloud-init volumes,
Multus selections on pods, NetworkAttachmentDefinitions and the CNI configurations in them, the parts of an
AdmissionReview the webhook reads.  Pure, as the rest of the domain: no clients, no I/O; the watcher, the
webhook and the CNI plugin feed them objects and get lease commands' inputs back."""
