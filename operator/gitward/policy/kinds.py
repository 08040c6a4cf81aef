"""What gitward knows about Kubernetes kinds: their resource names, scope, and which a tenant may use.

The default allowed set is namespaced and safe for a team to own. Some kinds
are never allowed, whatever a tenant's ``allowedKinds`` says: everything
cluster-scoped, RBAC at cluster scope, admission and API extension, and the
kinds that make up the tenant's own fence (quota, limits) and gitward itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KindInfo:
    """A kind's REST resource and scope."""

    group: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def key(self) -> str:
        """``group/Kind``, or just ``Kind`` for the core group."""
        return f"{self.group}/{self.kind}" if self.group else self.kind


def _namespaced(group: str, kind: str, plural: str) -> KindInfo:
    return KindInfo(group, kind, plural, namespaced=True)


def _cluster(group: str, kind: str, plural: str) -> KindInfo:
    return KindInfo(group, kind, plural, namespaced=False)


_KNOWN = [
    _namespaced("", "ConfigMap", "configmaps"),
    _namespaced("", "Secret", "secrets"),
    _namespaced("", "Service", "services"),
    _namespaced("", "ServiceAccount", "serviceaccounts"),
    _namespaced("", "Pod", "pods"),
    _namespaced("", "PersistentVolumeClaim", "persistentvolumeclaims"),
    _namespaced("", "Endpoints", "endpoints"),
    _namespaced("", "ResourceQuota", "resourcequotas"),
    _namespaced("", "LimitRange", "limitranges"),
    _namespaced("", "ReplicationController", "replicationcontrollers"),
    _namespaced("", "Event", "events"),
    _cluster("", "Namespace", "namespaces"),
    _cluster("", "Node", "nodes"),
    _cluster("", "PersistentVolume", "persistentvolumes"),
    _namespaced("apps", "Deployment", "deployments"),
    _namespaced("apps", "StatefulSet", "statefulsets"),
    _namespaced("apps", "DaemonSet", "daemonsets"),
    _namespaced("apps", "ReplicaSet", "replicasets"),
    _namespaced("batch", "Job", "jobs"),
    _namespaced("batch", "CronJob", "cronjobs"),
    _namespaced("autoscaling", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    _namespaced("policy", "PodDisruptionBudget", "poddisruptionbudgets"),
    _namespaced("networking.k8s.io", "Ingress", "ingresses"),
    _namespaced("networking.k8s.io", "NetworkPolicy", "networkpolicies"),
    _cluster("networking.k8s.io", "IngressClass", "ingressclasses"),
    _namespaced("discovery.k8s.io", "EndpointSlice", "endpointslices"),
    _namespaced("coordination.k8s.io", "Lease", "leases"),
    _namespaced("rbac.authorization.k8s.io", "Role", "roles"),
    _namespaced("rbac.authorization.k8s.io", "RoleBinding", "rolebindings"),
    _cluster("rbac.authorization.k8s.io", "ClusterRole", "clusterroles"),
    _cluster("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings"),
    _cluster("apiextensions.k8s.io", "CustomResourceDefinition", "customresourcedefinitions"),
    _cluster("admissionregistration.k8s.io", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations"),
    _cluster(
        "admissionregistration.k8s.io", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations"
    ),
    _cluster("admissionregistration.k8s.io", "ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    _cluster(
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    ),
    _cluster("apiregistration.k8s.io", "APIService", "apiservices"),
    _cluster("storage.k8s.io", "StorageClass", "storageclasses"),
    _cluster("storage.k8s.io", "CSIDriver", "csidrivers"),
    _cluster("scheduling.k8s.io", "PriorityClass", "priorityclasses"),
    _cluster("node.k8s.io", "RuntimeClass", "runtimeclasses"),
    _cluster("certificates.k8s.io", "CertificateSigningRequest", "certificatesigningrequests"),
    _cluster("gitward.dev", "GitOpsTenant", "gitopstenants"),
    _namespaced("gitward.dev", "GitOpsApp", "gitopsapps"),
    _namespaced("gitward.dev", "GitOpsRevision", "gitopsrevisions"),
]
KNOWN: dict[str, KindInfo] = {info.key: info for info in _KNOWN}

DEFAULT_ALLOWED = frozenset(
    {
        "ConfigMap", "Secret", "Service", "ServiceAccount", "Pod", "PersistentVolumeClaim",
        "apps/Deployment", "apps/StatefulSet", "apps/ReplicaSet", "batch/Job", "batch/CronJob",
        "autoscaling/HorizontalPodAutoscaler", "policy/PodDisruptionBudget",
        "networking.k8s.io/Ingress", "networking.k8s.io/NetworkPolicy",
        "rbac.authorization.k8s.io/Role", "rbac.authorization.k8s.io/RoleBinding",
    }
)  # fmt: skip

# Never, whatever allowedKinds says (cluster-scoped kinds are refused separately, by scope).
NEVER_ALLOWED = frozenset(
    {"ResourceQuota", "LimitRange", "Endpoints", "Event", "discovery.k8s.io/EndpointSlice"}
)
NEVER_ALLOWED_GROUPS = frozenset(
    {"gitward.dev", "apiextensions.k8s.io", "admissionregistration.k8s.io", "apiregistration.k8s.io"}
)

# Workloads and where their pod spec lives.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "apps/Deployment": ("spec", "template", "spec"),
    "apps/StatefulSet": ("spec", "template", "spec"),
    "apps/DaemonSet": ("spec", "template", "spec"),
    "apps/ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "batch/Job": ("spec", "template", "spec"),
    "batch/CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def kind_key(api_version: str, kind: str) -> str:
    """``group/Kind`` from an object's apiVersion and kind."""
    group = api_version.rpartition("/")[0]
    return f"{group}/{kind}" if group else kind


def allowed_set(allowed_kinds: Iterable[str]) -> frozenset[str]:
    """The tenant's allowed kinds as ``group/Kind`` keys; empty means the default set."""
    keys = frozenset(allowed_kinds)
    return keys or DEFAULT_ALLOWED
