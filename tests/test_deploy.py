"""deploy/ validated offline: every core manifest against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), cert-manager objects against their required fields, and the
manifests against each other and against the code (paths, ports, deadlines, least privilege)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import promql_parser
import pytest
import yaml

from ipam.config import SETTINGS

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.33.0"


def manifests() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in manifests() if d["kind"] == kind]


def config_map(name: str) -> dict:
    return next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == name)


CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")  # checked by the tests below, not by the core schemas


@pytest.mark.parametrize("name, doc", [(f"{n}:{d['kind']}/{d['metadata']['name']}", d) for n, d in manifests()
                                       if not d["apiVersion"].startswith(CRD_GROUPS)])
def test_core_manifests_match_the_kubernetes_schema(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_cert_manager_objects_have_what_cert_manager_requires():
    issuer, = by_kind("Issuer")
    cert, = by_kind("Certificate")
    assert "selfSigned" in issuer["spec"]
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": issuer["metadata"]["name"]}
    assert cert["spec"]["secretName"] and cert["spec"]["dnsNames"]


def test_kustomization_lists_every_file():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    generated = [f for g in kustomization["configMapGenerator"] for f in g["files"]]
    assert generated == ["dashboards/ipam.json"] and all((DEPLOY / f).is_file() for f in generated)


def test_webhook_points_at_the_service_the_certificate_and_the_route():
    hook, = by_kind("MutatingWebhookConfiguration")
    cert, = by_kind("Certificate")
    w, pods = hook["webhooks"]
    svc = next(s for s in by_kind("Service") if s["metadata"]["name"] == w["clientConfig"]["service"]["name"])
    assert w["clientConfig"]["service"]["path"] == "/mutate-virtualmachines"
    assert f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc" in cert["spec"]["dnsNames"]
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"ipam/{cert['metadata']['name']}"
    assert w["sideEffects"] == "NoneOnDryRun" and w["failurePolicy"] == "Fail"
    deadline = float(next(s.default for s in SETTINGS if s.env == "IPAM_WEBHOOK_DEADLINE_SECONDS"))
    assert deadline < w["timeoutSeconds"] <= 30
    assert w["rules"] == [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                           "resources": ["virtualmachines"], "scope": "Namespaced"}]
    opted_out = {e["key"] for e in w["namespaceSelector"]["matchExpressions"] if e["values"] == ["ignore"]}
    assert opted_out == {"ipam.kubevirt.io/mac-allocation", "mutatevirtualmachines.kubemacpool.io"}
    # pods: CREATE only, KubeMacPool's pod label, virt-launcher pods never sent, Ignore (every pod passes here)
    assert pods["clientConfig"]["service"] == {**w["clientConfig"]["service"], "path": "/mutate-pods"}
    assert pods["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                              "scope": "Namespaced"}]
    opted_out = {e["key"] for e in pods["namespaceSelector"]["matchExpressions"] if e["values"] == ["ignore"]}
    assert opted_out == {"ipam.kubevirt.io/mac-allocation", "mutatepods.kubemacpool.io"}
    assert pods["objectSelector"]["matchExpressions"] == [{"key": "kubevirt.io", "operator": "NotIn",
                                                           "values": ["virt-launcher"]}]
    assert pods["failurePolicy"] == "Ignore" and pods["sideEffects"] == "NoneOnDryRun"


def test_rbac_is_least_privilege_and_writes_only_claim_status():
    roles = {r["metadata"]["name"]: r for r in by_kind("ClusterRole")}
    writes = {(r, v) for role in roles.values() for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]
              if v not in ("get", "list", "watch")}
    assert writes == {("ipamclaims/status", "patch")}  # the watcher writes a claim's status, nothing else is written
    resources = {name: {r for rule in role["rules"] for r in rule["resources"]} for name, role in roles.items()}
    assert resources == {"ipam-watcher": {"virtualmachines", "virtualmachineinstances", "network-attachment-definitions",
                                          "ipamclaims", "ipamclaims/status", "pods", "ippools"},
                         "ipam-namespaces": {"namespaces"}, "ipam-cni": {"pods", "virtualmachineinstances", "ipamclaims"}}
    node_verbs = {v for rule in roles["ipam-cni"]["rules"] for v in rule["verbs"]}
    assert node_verbs == {"get"}  # on every node: read single objects, never list a cluster's pods
    bound = {b["roleRef"]["name"]: [s["name"] for s in b["subjects"]] for b in by_kind("ClusterRoleBinding")}
    # system:auth-delegator (built in) lets the api create TokenReviews and nothing else of note
    assert bound == {"ipam-watcher": ["ipam-watcher"], "ipam-namespaces": ["ipam-api"], "system:auth-delegator": ["ipam-api"],
                     "ipam-cni": ["ipam-cni"]}
    accounts = {}
    for dep in by_kind("Deployment") + by_kind("DaemonSet"):
        spec = dep["spec"]["template"]["spec"]
        accounts[dep["metadata"]["name"]] = (spec["serviceAccountName"], spec["automountServiceAccountToken"])
    assert accounts == {"ipam-api": ("ipam-api", True), "ipam-watcher": ("ipam-watcher", True),
                        "ipam-allocator": ("ipam", False), "ipam-projector": ("ipam", False), "ipam-cni": ("ipam-cni", True)}
    api = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "ipam-api")
    env = {e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IPAM_NODE_SUBJECTS"] == "user:system:serviceaccount:ipam:ipam-cni"  # the node role, not admin


def test_the_daemonset_installs_the_plugin_where_the_nodes_cni_looks():
    ds, = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    [c] = spec["containers"]
    args = c["args"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    paths = {v["name"]: v.get("hostPath", {}).get("path") for v in spec["volumes"]}
    assert paths[mounts[args[args.index("--bin-dir") + 1]]] == "/opt/cni/bin"
    assert paths[mounts[args[args.index("--conf-dir") + 1]]] == args[args.index("--host-conf-dir") + 1] == "/etc/cni/net.d"
    cert, = by_kind("Certificate")
    url = args[args.index("--url") + 1]
    assert url.split("//")[1].split(":")[0] in cert["spec"]["dnsNames"]
    assert c["command"] == ["ipam-cni-install"] and spec["tolerations"] == [{"operator": "Exists"}]
    job, = by_kind("Job")
    pod = job["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) \
        == ("ipam", False)


def test_every_role_runs_and_reads_documented_settings():
    documented = {s.env for s in SETTINGS}
    roles = set()
    for dep in by_kind("Deployment"):
        [c] = dep["spec"]["template"]["spec"]["containers"]
        roles.add(c["args"][c["args"].index("--role") + 1])
        assert {e["name"] for e in c["env"]} <= documented
    config = config_map("ipam")
    assert set(config["data"]) <= documented
    assert roles == {"api", "allocator", "projector", "watcher"}


def test_the_validation_would_catch_a_mistake():
    dep = by_kind("Deployment")[0]
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_every_listener_is_https_with_tokens_and_the_service_runs_without_ddl():
    config = config_map("ipam")
    assert config["data"]["IPAM_MIGRATE"] == "false" and config["data"]["IPAM_TOKEN_FILE"]
    assert "IPAM_PLAIN_HTTP" not in config["data"]
    cert, = by_kind("Certificate")
    for dep in by_kind("Deployment"):
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert "IPAM_PLAIN_HTTP" not in {e["name"] for e in c["env"]}
        assert {p["name"] for p in c["ports"]} >= {"http"}
        for probe in (c["readinessProbe"], c["livenessProbe"]):
            assert probe["httpGet"]["scheme"] == "HTTPS" and probe["httpGet"]["path"] in ("/readyz", "/healthz")
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tls" in mounts and "/etc/ipam/tokens" in mounts
    monitor, = by_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["serverName"] in cert["spec"]["dnsNames"]
    metrics = next(s for s in by_kind("Service") if s["metadata"]["name"] == "ipam-metrics")
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()


def alert_rules() -> list[dict]:
    rule, = by_kind("PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_targets() -> list[dict]:
    dashboard = json.loads((DEPLOY / "dashboards" / "ipam.json").read_text())
    return [t for panel in dashboard["panels"] for t in panel["targets"]]


def test_alerts_cover_what_the_issue_names_and_parse_as_promql():
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"IpamDown", "IpamMacCollision", "IpamPoolNearlyFull", "IpamSubnetNearlyFull", "IpamProjectorLag",
            "IpamWebhookErrors"} <= names
    for r in rules:
        promql_parser.parse(r["expr"])  # raises on a syntax error
        assert r["labels"]["severity"] in ("critical", "warning", "info")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
    with pytest.raises(ValueError):
        promql_parser.parse("max by (pool) (ipam_pool_used_ratio > 0.9")


def test_the_dashboard_is_grafana_json_whose_queries_parse():
    dashboard = json.loads((DEPLOY / "dashboards" / "ipam.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in ("stat", "timeseries") and panel["targets"]
        assert panel["datasource"]["uid"] == "${datasource}"
    for target in dashboard_targets():
        promql_parser.parse(target["expr"])


def test_a_fresh_install_declares_a_default_pool_in_a_locally_administered_range():
    from ipam.api.declared import parse
    from ipam.domain.pools import parse_range

    declared_map = config_map("ipam-declared")
    declared = parse(declared_map["data"]["ipam.yaml"])
    (pool,) = [p for p in declared.pools if p.default]
    rng = parse_range(pool.range)
    assert all((mac >> 40) & 0b11 == 0b10 for mac in (rng.first, rng.last)), "locally administered, unicast"
    api = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "ipam-api")
    spec = api["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    path = next(e["value"] for e in container["env"] if e["name"] == "IPAM_CONFIG_FILE")
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "ipam-declared" and path.rsplit("/", 1)[1] in declared_map["data"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_every_role_survives_a_drain_and_a_lost_node():
    """A PodDisruptionBudget keeps one ready replica of every role through a drain; replicas spread over nodes."""
    budgets = by_kind("PodDisruptionBudget")
    for dep in by_kind("Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["replicas"] >= 2, dep["metadata"]["name"]
        (budget,) = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        assert budget["spec"]["minAvailable"] == 1
        spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        hostname = next(c for c in spread if c["topologyKey"] == "kubernetes.io/hostname")
        assert hostname["whenUnsatisfiable"] == "DoNotSchedule" and _selects(hostname["labelSelector"], labels)


def test_network_policies_open_the_webhook_to_the_api_server_and_metrics_to_prometheus():
    policies = by_kind("NetworkPolicy")
    (deny,) = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    api = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "ipam-api")
    api_labels = api["spec"]["template"]["metadata"]["labels"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    webhook, = by_kind("MutatingWebhookConfiguration")
    service = next(s for s in by_kind("Service") if s["metadata"]["name"] == webhook["webhooks"][0]["clientConfig"]
                   ["service"]["name"])
    target = service["spec"]["ports"][0]["targetPort"]
    open_to_all = [rule for p in policies if _selects(p["spec"]["podSelector"], api_labels)
                   for rule in p["spec"].get("ingress", []) if "from" not in rule]
    assert any(port["port"] == target for rule in open_to_all for port in rule["ports"]) and target in ports
    for dep in by_kind("Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        scraped = [rule for p in policies if _selects(p["spec"]["podSelector"], labels) for rule in p["spec"].get("ingress", [])
                   if any("namespaceSelector" in f for f in rule.get("from", []))]
        assert any(port["port"] == "http" for rule in scraped for port in rule["ports"]), dep["metadata"]["name"]
