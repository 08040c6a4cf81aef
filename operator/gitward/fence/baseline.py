"""The objects that fence one tenant namespace, built from the tenant's spec. Pure.

Every name starts with ``gitward-``, which tenant manifests may not use
(``policy.check`` refuses it), so a tenant can neither change nor delete its
own fence through Git. The ServiceAccount ``gitward-tenant`` is the identity
gitward impersonates to apply the tenant's manifests; its Role grants the
tenant's allowed kinds in that namespace only, so the API server's RBAC is
a second wall behind gitward's own policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gitward.api.resources import NetworkIsolation, TenantSpec
from gitward.policy.kinds import KNOWN, KindInfo, allowed_set

TENANT_SERVICE_ACCOUNT = "gitward-tenant"
NETWORK_POLICY = "gitward-default-deny"
QUOTA = "gitward-quota"
LIMIT_RANGE = "gitward-limits"
TENANT_LABEL = "gitward.dev/tenant"
TENANT_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
BINDABLE_CLUSTER_ROLES = ("view", "edit")


def _meta(name: str, namespace: str | None, tenant: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {TENANT_LABEL: tenant, "app.kubernetes.io/managed-by": "gitward"},
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def namespace(name: str, *, tenant_name: str, tenant: TenantSpec) -> dict[str, Any]:
    """The namespace, labelled for Pod Security Admission at the tenant's level."""
    meta = _meta(name, None, tenant_name)
    level = str(tenant.pod_security)
    for mode in ("enforce", "audit", "warn"):
        meta["labels"][f"pod-security.kubernetes.io/{mode}"] = level
        meta["labels"][f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def network_policy(ns: str, *, tenant_name: str) -> dict[str, Any]:
    """Deny all ingress and egress, except DNS to the cluster's resolver."""
    dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(NETWORK_POLICY, ns, tenant_name),
        "spec": {
            "podSelector": {},
            # Ingress listed with no rules denies all ingress. (An explicit empty list would be
            # dropped by the server and re-sent on every apply, so the object would never settle.)
            "policyTypes": ["Ingress", "Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": dns_ports,
                }
            ],
        },
    }


def resource_quota(ns: str, *, tenant_name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The tenant's ResourceQuota spec, in this namespace."""
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(QUOTA, ns, tenant_name),
        "spec": dict(spec),
    }


def limit_range(ns: str, *, tenant_name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The tenant's LimitRange spec, in this namespace."""
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(LIMIT_RANGE, ns, tenant_name),
        "spec": dict(spec),
    }


def role_rules(kinds: Iterable[KindInfo]) -> list[dict[str, Any]]:
    """RBAC rules for the allowed kinds, grouped by API group, plus binding the two bindable ClusterRoles."""
    by_group: dict[str, set[str]] = {}
    for info in kinds:
        by_group.setdefault(info.group, set()).add(info.plural)
    rules: list[dict[str, Any]] = [
        {"apiGroups": [group], "resources": sorted(plurals), "verbs": list(TENANT_VERBS)}
        for group, plurals in sorted(by_group.items())
    ]
    if any(info.key == "batch/Job" for info in kinds):
        # A failed test Job's result: its pods and their log tails, read as the tenant.
        rules.append({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]})
        rules.append({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]})
    if any(info.key == "rbac.authorization.k8s.io/RoleBinding" for info in kinds):
        rules.append(
            {
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"],
                "verbs": ["bind"],
                "resourceNames": list(BINDABLE_CLUSTER_ROLES),
            }
        )
    return rules


def allowed_kind_infos(tenant: TenantSpec, discovered: Mapping[str, KindInfo]) -> list[KindInfo]:
    """The tenant's allowed kinds with their REST names (known or discovered), namespaced ones only."""
    infos = []
    for key in sorted(allowed_set(tenant.allowed_kinds)):
        info = KNOWN.get(key) or discovered.get(key)
        if info is not None and info.namespaced:
            infos.append(info)
    return infos


def rbac(ns: str, *, tenant_name: str, kinds: Iterable[KindInfo]) -> list[dict[str, Any]]:
    """The tenant ServiceAccount, its Role and the RoleBinding between them."""
    kinds = list(kinds)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(TENANT_SERVICE_ACCOUNT, ns, tenant_name),
            # gitward acts as this account by impersonation and never needs its token: a Pod that
            # names it (policy refuses that too) gets no credentials to climb out with.
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(TENANT_SERVICE_ACCOUNT, ns, tenant_name),
            "rules": role_rules(kinds),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(TENANT_SERVICE_ACCOUNT, ns, tenant_name),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": TENANT_SERVICE_ACCOUNT,
            },
            "subjects": [{"kind": "ServiceAccount", "name": TENANT_SERVICE_ACCOUNT, "namespace": ns}],
        },
    ]


OPERATOR_BINDINGS = (
    ("gitward-operator-fence", "gitward-fence"),
    ("gitward-operator-tenant", "gitward-tenant"),
)


def operator_bindings(ns: str, *, tenant_name: str, namespace: str, name: str) -> list[dict[str, Any]]:
    """RoleBindings giving the operator, in this namespace only, the fence and the tenant's kinds.

    Holding the tenant's kinds here is what lets the operator create the tenant's Role without the
    ``escalate`` verb (RBAC only lets you grant what you hold); the fence ClusterRole also lets it
    read this namespace's Secrets (git credentials, webhook tokens), and no others.
    """
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(binding, ns, tenant_name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }
        for binding, cluster_role in OPERATOR_BINDINGS
    ]


def objects_for(
    ns: str, *, tenant_name: str, tenant: TenantSpec, kinds: Iterable[KindInfo]
) -> list[dict[str, Any]]:
    """Everything that fences ``ns``, in apply order (the namespace first)."""
    objects = [namespace(ns, tenant_name=tenant_name, tenant=tenant)]
    if tenant.network_policy is NetworkIsolation.DEFAULT_DENY:
        objects.append(network_policy(ns, tenant_name=tenant_name))
    if tenant.resource_quota:
        objects.append(resource_quota(ns, tenant_name=tenant_name, spec=tenant.resource_quota))
    if tenant.limit_range:
        objects.append(limit_range(ns, tenant_name=tenant_name, spec=tenant.limit_range))
    objects.extend(rbac(ns, tenant_name=tenant_name, kinds=kinds))
    return objects


def absent_for(tenant: TenantSpec) -> list[tuple[str, str, str]]:
    """``(apiVersion, kind, name)`` of fence objects the tenant's spec no longer wants."""
    absent = []
    if tenant.network_policy is not NetworkIsolation.DEFAULT_DENY:
        absent.append(("networking.k8s.io/v1", "NetworkPolicy", NETWORK_POLICY))
    if not tenant.resource_quota:
        absent.append(("v1", "ResourceQuota", QUOTA))
    if not tenant.limit_range:
        absent.append(("v1", "LimitRange", LIMIT_RANGE))
    return absent
