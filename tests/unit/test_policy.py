"""Tenant policy over rendered objects: each attack class gets its reason, and all violations are listed."""

from __future__ import annotations

from typing import Any

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import parse_tenant_spec
from gitward.policy.check import PolicyViolations, check
from gitward.render.manifests import Manifest

NS = "team-a"


def tenant(**policy: Any):
    return parse_tenant_spec(
        {
            "namespaces": [NS],
            "sources": [{"url": "https://git.example.com/*"}],
            "trust": {"keysFrom": [{"configMapRef": {"name": "k"}}]},
            "policy": policy,
        }
    )


def obj(api_version: str, kind: str, name: str = "x", **fields: Any) -> Manifest:
    body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}
    if "namespace" in fields:
        body["metadata"]["namespace"] = body.pop("namespace")
    return Manifest(body, "deploy/app.yaml", 0)


RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "image": "example/app:1",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
}


def deployment(pod: dict[str, Any], name: str = "web") -> Manifest:
    return obj(
        "apps/v1",
        "Deployment",
        name,
        spec={
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod},
        },
    )


def violations(manifests: list[Manifest], **policy: Any) -> PolicyViolations:
    with pytest.raises(PolicyViolations) as refused:
        check(manifests, tenant=tenant(**policy), namespace=NS)
    return refused.value


def test_allowed_objects_get_the_target_namespace():
    """A compliant Deployment and ConfigMap pass, with the namespace filled in, inputs untouched."""
    manifests = [deployment(RESTRICTED_POD), obj("v1", "ConfigMap", "settings", data={"a": "b"})]
    placed = check(manifests, tenant=tenant(), namespace=NS)
    assert [m.namespace for m in placed] == [NS, NS]
    assert manifests[1].namespace is None


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (obj("v1", "Namespace", "team-b"), Reason.FORBIDDEN_KIND),
        (obj("rbac.authorization.k8s.io/v1", "ClusterRole"), Reason.FORBIDDEN_KIND),
        (obj("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"), Reason.FORBIDDEN_KIND),
        (obj("apiextensions.k8s.io/v1", "CustomResourceDefinition"), Reason.FORBIDDEN_KIND),
        (obj("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"), Reason.FORBIDDEN_KIND),
        (obj("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"), Reason.FORBIDDEN_KIND),
        (obj("apiregistration.k8s.io/v1", "APIService"), Reason.FORBIDDEN_KIND),
        (obj("v1", "PersistentVolume"), Reason.FORBIDDEN_KIND),
        (obj("storage.k8s.io/v1", "StorageClass"), Reason.FORBIDDEN_KIND),
        (obj("scheduling.k8s.io/v1", "PriorityClass"), Reason.FORBIDDEN_KIND),
        (obj("gitward.dev/v1alpha1", "GitOpsApp"), Reason.FORBIDDEN_KIND),
        (obj("v1", "ResourceQuota"), Reason.FORBIDDEN_KIND),
        (obj("apps/v1", "DaemonSet"), Reason.FORBIDDEN_KIND),
        (obj("example.com/v1", "Widget"), Reason.FORBIDDEN_KIND),
        (obj("v1", "ConfigMap", namespace="team-b"), Reason.NAMESPACE_VIOLATION),
        (obj("v1", "Secret", data={"k": "dg=="}), Reason.PLAINTEXT_SECRET),
        (obj("v1", "Secret", type="kubernetes.io/service-account-token"), Reason.POLICY_VIOLATION),
        (obj("networking.k8s.io/v1", "NetworkPolicy", "gitward-default-deny"), Reason.POLICY_VIOLATION),
        (obj("v1", "ServiceAccount", "gitward-tenant"), Reason.POLICY_VIOLATION),
    ],
    ids=lambda value: value.kind + "/" + value.name if isinstance(value, Manifest) else str(value),
)
def test_forbidden_objects(manifest, reason):
    """Cluster-scoped, never-allowed, unlisted kinds, other namespaces, Secrets, reserved names."""
    assert violations([manifest]).reason is reason


@pytest.mark.parametrize(
    ("rules", "detail"),
    [
        ([{"apiGroups": [""], "resources": ["pods"], "verbs": ["escalate"]}], "escalate"),
        ([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["bind"]}], "bind"),
        ([{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]}], "impersonate"),
        ([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}], "*"),
        ([{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}], "'*'"),
        ([{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}], "'*'"),
    ],
)
def test_roles_that_escalate_are_refused(rules, detail):
    """escalate, bind, impersonate and wildcards in a Role are PolicyViolation."""
    error = violations([obj("rbac.authorization.k8s.io/v1", "Role", rules=rules)])
    assert error.reason is Reason.POLICY_VIOLATION
    assert detail in error.message


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        (
            {"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}, "subjects": []},
            Reason.POLICY_VIOLATION,
        ),
        ({"roleRef": {"kind": "ClusterRole", "name": "admin"}, "subjects": []}, Reason.POLICY_VIOLATION),
        (
            {
                "roleRef": {"kind": "Role", "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "team-b"}],
            },
            Reason.NAMESPACE_VIOLATION,
        ),
        (
            {
                "roleRef": {"kind": "Role", "name": "r"},
                "subjects": [{"kind": "Group", "name": "system:authenticated"}],
            },
            Reason.POLICY_VIOLATION,
        ),
    ],
)
def test_bindings_that_reach_too_far_are_refused(binding, reason):
    """Binding cluster roles other than view/edit, subjects from other namespaces, or everyone."""
    assert violations([obj("rbac.authorization.k8s.io/v1", "RoleBinding", **binding)]).reason is reason


def test_binding_view_and_edit_in_the_namespace_is_allowed():
    """view and edit may be bound to the tenant's own ServiceAccounts."""
    for role in ("view", "edit"):
        check(
            [
                obj(
                    "rbac.authorization.k8s.io/v1",
                    "RoleBinding",
                    roleRef={"kind": "ClusterRole", "name": role},
                    subjects=[{"kind": "ServiceAccount", "name": "ci", "namespace": NS}],
                )
            ],
            tenant=tenant(),
            namespace=NS,
        )


INSECURE_PODS = {
    "privileged": {
        **RESTRICTED_POD,
        "containers": [{**RESTRICTED_POD["containers"][0], "securityContext": {"privileged": True}}],
    },
    "hostPath": {**RESTRICTED_POD, "volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
    "hostNetwork": {**RESTRICTED_POD, "hostNetwork": True},
    "hostPID": {**RESTRICTED_POD, "hostPID": True},
    "capabilities": {
        **RESTRICTED_POD,
        "containers": [
            {
                "name": "app",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
                },
            }
        ],
    },
    "root": {
        **RESTRICTED_POD,
        "securityContext": {"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
    },
}


@pytest.mark.parametrize("problem", sorted(INSECURE_PODS))
@pytest.mark.parametrize(
    "wrap",
    ["Pod", "Deployment", "StatefulSet", "ReplicaSet", "Job", "CronJob"],
)
def test_pod_security_in_every_workload_kind(problem, wrap):
    """Privileged, hostPath, host namespaces, added capabilities, root: refused in every workload kind."""
    pod = INSECURE_PODS[problem]
    template = {"metadata": {"labels": {"a": "b"}}, "spec": pod}
    manifests = {
        "Pod": obj("v1", "Pod", spec=pod),
        "Deployment": obj("apps/v1", "Deployment", spec={"template": template}),
        "StatefulSet": obj("apps/v1", "StatefulSet", spec={"template": template}),
        "ReplicaSet": obj("apps/v1", "ReplicaSet", spec={"template": template}),
        "Job": obj("batch/v1", "Job", spec={"template": template}),
        "CronJob": obj("batch/v1", "CronJob", spec={"jobTemplate": {"spec": {"template": template}}}),
    }
    error = violations([manifests[wrap]])
    assert error.reason is Reason.POLICY_VIOLATION
    assert "pod security restricted" in error.message


def test_daemonsets_are_checked_when_a_tenant_allows_them():
    """A tenant that allows DaemonSets still gets pod security on their templates."""
    daemonset = obj("apps/v1", "DaemonSet", spec={"template": {"spec": INSECURE_PODS["hostPath"]}})
    assert violations([daemonset], allowedKinds=["apps/DaemonSet"]).reason is Reason.POLICY_VIOLATION


def test_baseline_allows_what_restricted_refuses_but_not_privileged():
    """Under baseline a root pod is fine; a privileged one is not. Under privileged both pass."""
    root = deployment(INSECURE_PODS["root"])
    check([root], tenant=tenant(podSecurity="baseline"), namespace=NS)
    assert (
        violations([deployment(INSECURE_PODS["privileged"])], podSecurity="baseline").reason
        is Reason.POLICY_VIOLATION
    )
    check([deployment(INSECURE_PODS["privileged"])], tenant=tenant(podSecurity="privileged"), namespace=NS)


def test_plaintext_secrets_when_the_tenant_allows_them():
    """allowPlaintextSecrets lets Secrets through, but never service-account tokens."""
    check([obj("v1", "Secret", data={"k": "dg=="})], tenant=tenant(allowPlaintextSecrets=True), namespace=NS)
    token = obj("v1", "Secret", type="kubernetes.io/service-account-token")
    assert violations([token], allowPlaintextSecrets=True).reason is Reason.POLICY_VIOLATION


def test_every_violation_is_reported_not_only_the_first():
    """Three bad objects with different problems: one error listing all of them, reason of the first."""
    error = violations(
        [
            obj("rbac.authorization.k8s.io/v1", "ClusterRole", "admin-ish"),
            obj("v1", "ConfigMap", "elsewhere", namespace="kube-system"),
            deployment(INSECURE_PODS["hostPath"], name="root-fs"),
        ]
    )
    assert error.reason is Reason.FORBIDDEN_KIND
    assert {v.reason for v in error.violations} == {
        Reason.FORBIDDEN_KIND,
        Reason.NAMESPACE_VIOLATION,
        Reason.POLICY_VIOLATION,
    }
    for name in ("admin-ish", "elsewhere", "root-fs"):
        assert name in error.message
    assert "deploy/app.yaml#0" in error.message


def test_the_same_object_twice_is_refused():
    """Two documents defining the same kind and name would fight: refused naming both places."""
    error = violations([obj("v1", "ConfigMap", "a"), obj("v1", "ConfigMap", "a")])
    assert "also defined in deploy/app.yaml#0" in error.message


def test_custom_kinds_need_to_be_allowed_explicitly():
    """A CRD kind passes once the tenant lists it as group/Kind."""
    widget = obj("example.com/v1", "Widget")
    check([widget], tenant=tenant(allowedKinds=["example.com/Widget"]), namespace=NS)
