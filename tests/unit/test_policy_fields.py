"""Fields of allowed kinds that reach outside the tenant: refused by default, allowed only by the admin's opt-in."""

from __future__ import annotations

from typing import Any

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import parse_tenant_spec
from gitward.policy.check import PolicyViolations, check
from gitward.render.manifests import Manifest

NS = "team-a"
BASE = {
    "namespaces": [NS, "team-a-batch"],
    "sources": [{"url": "https://git.example.com/*"}],
    "trust": {"keysFrom": [{"configMapRef": {"name": "k"}}]},
}
ALL_KINDS = [
    "Service",
    "ConfigMap",
    "PersistentVolumeClaim",
    "apps/Deployment",
    "networking.k8s.io/Ingress",
    "gateway.networking.k8s.io/HTTPRoute",
    "rbac.authorization.k8s.io/RoleBinding",
]


def tenant(**policy: Any):
    return parse_tenant_spec(
        {**BASE, "policy": {"allowedKinds": ALL_KINDS, "podSecurity": "privileged", **policy}}
    )


def manifest(api_version: str, kind: str, body: dict[str, Any], name: str = "x") -> Manifest:
    return Manifest(
        {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **body}, "deploy/x.yaml", 0
    )


def deployment(**pod: Any) -> Manifest:
    spec = {"containers": [{"name": "app", "image": "registry.example.com/app@sha256:" + "a" * 64}], **pod}
    template = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    return manifest(
        "apps/v1", "Deployment", {"spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}}
    )


def service(**spec: Any) -> Manifest:
    return manifest("v1", "Service", {"spec": {"ports": [{"port": 80}], **spec}})


def ingress(annotations: dict[str, str] | None = None, **spec: Any) -> Manifest:
    body: dict[str, Any] = {"spec": spec}
    obj = manifest("networking.k8s.io/v1", "Ingress", body)
    if annotations:
        obj.obj["metadata"]["annotations"] = annotations  # type: ignore[index]
    return obj


def binding(role_kind: str, role: str, *subjects: dict[str, str]) -> Manifest:
    return manifest(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        {
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": list(subjects),
        },
    )


def claim(**spec: Any) -> Manifest:
    return manifest("v1", "PersistentVolumeClaim", {"spec": {"accessModes": ["ReadWriteOnce"], **spec}})


def rule(host: str = "") -> dict[str, Any]:
    path = {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "x", "port": {"number": 80}}}}
    found: dict[str, Any] = {"http": {"paths": [path]}}
    if host:
        found["host"] = host
    return found


def sa(name: str, namespace: str = NS) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


REFUSED = {
    "service NodePort": (service(type="NodePort"), "spec.type NodePort"),
    "service LoadBalancer": (service(type="LoadBalancer"), "spec.type LoadBalancer"),
    "service externalIPs (CVE-2020-8554)": (service(externalIPs=["10.0.0.1"]), "CVE-2020-8554"),
    "ingress configuration snippet": (
        ingress(
            {"nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers x"},
            rules=[rule("a.team-a.example.com")],
        ),
        "snippets are never accepted",
    ),
    "ingress server snippet": (ingress({"nginx.ingress.kubernetes.io/server-snippet": "x"}), "snippets"),
    "ingress host not the tenant's": (
        ingress(rules=[rule("bank.example.com")]),
        "'bank.example.com' is not one",
    ),
    "ingress without host": (ingress(rules=[rule()]), "every host"),
    "ingress TLS host": (
        ingress(rules=[rule("a.team-a.example.com")], tls=[{"hosts": ["login.example.com"]}]),
        "'login.example.com'",
    ),
    "ingress default backend": (
        ingress(defaultBackend={"service": {"name": "x", "port": {"number": 80}}}),
        "defaultBackend",
    ),
    "gateway route without hostnames": (
        manifest("gateway.networking.k8s.io/v1", "HTTPRoute", {"spec": {"parentRefs": [{"name": "gw"}]}}),
        "spec.hostnames is empty",
    ),
    "system priority class": (deployment(priorityClassName="system-node-critical"), "system-node-critical"),
    "pinned nodeName": (deployment(nodeName="control-plane"), "bypasses the scheduler"),
    "tolerate everything": (deployment(tolerations=[{"operator": "Exists"}]), "tolerates every taint"),
    "host port": (
        deployment(
            containers=[{"name": "app", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}]}]
        ),
        "hostPort 80",
    ),
    "runs as gitward's ServiceAccount": (deployment(serviceAccountName="gitward-tenant"), "gitward's own"),
    "claim a given volume": (claim(volumeName="pv-of-another-tenant"), "claims a given volume"),
    "storage class not allowed": (claim(storageClassName="fast-unlimited"), "'fast-unlimited'"),
    "static binding with an empty class": (claim(storageClassName=""), "storageClassName ''"),
    "binding unauthenticated users": (
        binding("ClusterRole", "edit", {"kind": "Group", "name": "system:unauthenticated"}),
        "Group 'system:unauthenticated'",
    ),
    "binding all authenticated users": (
        binding("Role", "app", {"kind": "Group", "name": "system:authenticated"}),
        "Group 'system:authenticated'",
    ),
    "binding a node group": (
        binding("Role", "app", {"kind": "Group", "name": "system:nodes"}),
        "system:nodes",
    ),
    "binding a user not listed": (
        binding("Role", "app", {"kind": "User", "name": "mallory"}),
        "User 'mallory'",
    ),
    "binding another tenant's ServiceAccount": (
        binding("Role", "app", sa("default", "team-b")),
        "team-b/default is not in the tenant's namespaces",
    ),
    "binding gitward's ServiceAccount": (binding("Role", "app", sa("gitward-tenant")), "gitward's own"),
    "binding gitward's role": (binding("Role", "gitward-tenant", sa("app")), "roleRef Role 'gitward-tenant'"),
    "binding cluster-admin": (
        binding("ClusterRole", "cluster-admin", sa("app")),
        "ClusterRole 'cluster-admin'",
    ),
    "binding admin": (binding("ClusterRole", "admin", sa("app")), "ClusterRole 'admin'"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_climb_out_is_refused_by_default(name):
    """Each field that reaches outside the tenant is a PolicyViolation (or NamespaceViolation), named in the message."""
    obj, needle = REFUSED[name]
    with pytest.raises(PolicyViolations) as error:
        check([obj], tenant=tenant(), namespace=NS)
    assert error.value.reason in (Reason.POLICY_VIOLATION, Reason.NAMESPACE_VIOLATION)
    assert needle in error.value.message, error.value.message


def test_every_violation_of_a_commit_is_listed_together():
    """A commit with every climb-out is refused once, listing all of them."""
    objects = [obj for obj, _ in REFUSED.values()]
    with pytest.raises(PolicyViolations) as error:
        check(objects, tenant=tenant(), namespace=NS)
    assert len(error.value.violations) >= len(REFUSED)
    for _, needle in REFUSED.values():
        assert needle in error.value.message or any(needle in str(v) for v in error.value.violations)


ALLOWED = [
    service(),
    service(clusterIP="None"),
    ingress(rules=[rule("a.team-a.example.com")], tls=[{"hosts": ["a.team-a.example.com"]}]),
    manifest(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        {"spec": {"hostnames": ["api.team-a.example.com"], "parentRefs": [{"name": "gw"}]}},
    ),
    deployment(
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"}]
    ),
    deployment(serviceAccountName="app"),
    claim(),
    binding("Role", "app", sa("app"), sa("batch", "team-a-batch")),
    binding("ClusterRole", "view", sa("app")),
]


@pytest.mark.parametrize("obj", ALLOWED, ids=lambda m: f"{m.kind}-{len(str(m.obj))}")
def test_ordinary_objects_pass(obj):
    """What a tenant normally writes is not refused: ClusterIP Services, its own hosts, its own accounts."""
    policy = tenant(ingressHosts=["*.team-a.example.com"])
    assert check([obj], tenant=policy, namespace=NS)


def test_opt_ins_allow_what_the_admin_grants():
    """Each refusal above has an opt-in: service types, source ranges, hosts, classes, scheduling, users, roles."""
    policy = tenant(
        services={"types": ["ClusterIP", "LoadBalancer"], "loadBalancerSourceRanges": ["203.0.113.0/24"]},
        ingressHosts=["*"],
        priorityClasses=["team-high"],
        storageClasses=["standard"],
        allowNodeName=True,
        allowHostPorts=True,
        allowTolerateAll=True,
        allowVolumeName=True,
        rbac={
            "clusterRoles": ["view", "edit", "team-reader"],
            "users": ["alice@example.com"],
            "groups": ["team-a-devs"],
        },
    )
    allowed = [
        service(type="LoadBalancer", loadBalancerSourceRanges=["203.0.113.128/25"]),
        ingress(rules=[rule()]),
        deployment(
            priorityClassName="team-high",
            nodeName="n1",
            tolerations=[{"operator": "Exists"}],
            containers=[{"name": "app", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}],
        ),
        claim(storageClassName="standard", volumeName="pv-1"),
        binding(
            "ClusterRole",
            "team-reader",
            {"kind": "User", "name": "alice@example.com"},
            {"kind": "Group", "name": "team-a-devs"},
        ),
    ]
    assert len(check(allowed, tenant=policy, namespace=NS)) == len(allowed)
    with pytest.raises(PolicyViolations) as error:
        check(
            [service(type="LoadBalancer", loadBalancerSourceRanges=["0.0.0.0/0"])],
            tenant=policy,
            namespace=NS,
        )
    assert "'0.0.0.0/0' is outside" in error.value.message
