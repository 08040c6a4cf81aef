"""The install manifests' RBAC, on the real API server: what the operator can and cannot do.

SubjectAccessReviews ask the API server itself; a functional check then
deploys through the pipeline with the operator's own token (and the tenant
impersonated from it), proving the least-privilege RBAC is also enough.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from gitward.kube import clients
from gitward.kube.objects import Objects
from support.paths import REPO
from support.pipeline import Harness, configmap, deployment

pytestmark = pytest.mark.cluster
OPERATOR = "system:serviceaccount:gitward-system:gitward"


@pytest.fixture(scope="module")
def installed(kubectl, crds):
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests"))
    return True


def allowed(admin, verb, resource, *, namespace="", group="", name="", subresource="") -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=OPERATOR,
            groups=["system:serviceaccounts", "system:serviceaccounts:gitward-system", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace or None, verb=verb, group=group, resource=resource, name=name or None,
                subresource=subresource or None,
            ),
        )
    )  # fmt: skip
    return bool(client.AuthorizationV1Api(admin).create_subject_access_review(review).status.allowed)


# Leader election: the shards' Leases, in the operator's own namespace.
LEASES = {"group": "coordination.k8s.io", "namespace": "gitward-system"}

CAN = [
    ("list", "gitopsapps", {"group": "gitward.dev"}),
    ("patch", "gitopsapps", {"group": "gitward.dev", "namespace": "team-x", "subresource": "status"}),
    ("create", "gitopsrevisions", {"group": "gitward.dev", "namespace": "team-x"}),
    ("get", "gitopstenants", {"group": "gitward.dev", "name": "team-x"}),
    ("impersonate", "serviceaccounts", {"namespace": "team-x", "name": "gitward-tenant"}),
    ("create", "namespaces", {}),
    ("create", "rolebindings", {"group": "rbac.authorization.k8s.io", "namespace": "team-x"}),
    ("bind", "clusterroles", {"group": "rbac.authorization.k8s.io", "name": "gitward-fence"}),
    ("get", "configmaps", {"namespace": "gitward-system", "name": "team-x-keys"}),
    # Tenants' SOPS age keys and registry credentials: the admin keeps them in the operator's namespace.
    ("get", "secrets", {"namespace": "gitward-system", "name": "team-x-sops"}),
    ("watch", "secrets", {"namespace": "gitward-system"}),
    ("create", "events", {"namespace": "team-x"}),
    ("create", "leases", LEASES),
    ("get", "leases", {**LEASES, "name": "gitward-shard-default"}),
    ("update", "leases", {**LEASES, "name": "gitward-shard-default"}),
]
CANNOT = [
    ("get", "secrets", {"namespace": "kube-system", "name": "anything"}),
    ("list", "secrets", {}),
    ("get", "secrets", {"namespace": "default", "name": "anything"}),
    ("patch", "secrets", {"namespace": "gitward-system", "name": "team-x-sops"}),
    ("create", "clusterrolebindings", {"group": "rbac.authorization.k8s.io"}),
    ("create", "clusterroles", {"group": "rbac.authorization.k8s.io"}),
    ("escalate", "roles", {"group": "rbac.authorization.k8s.io", "namespace": "kube-system"}),
    ("bind", "clusterroles", {"group": "rbac.authorization.k8s.io", "name": "cluster-admin"}),
    ("bind", "clusterroles", {"group": "rbac.authorization.k8s.io", "name": "edit"}),
    ("impersonate", "serviceaccounts", {"namespace": "kube-system", "name": "default"}),
    ("impersonate", "users", {"name": "admin"}),
    ("impersonate", "groups", {"name": "system:masters"}),
    ("create", "deployments", {"group": "apps", "namespace": "kube-system"}),
    ("create", "pods", {"namespace": "default"}),
    ("delete", "namespaces", {"name": "kube-system"}),
    ("update", "gitopstenants", {"group": "gitward.dev", "name": "team-x"}),
    ("delete", "customresourcedefinitions", {"group": "apiextensions.k8s.io"}),
    ("create", "mutatingwebhookconfigurations", {"group": "admissionregistration.k8s.io"}),
    ("update", "leases", {**LEASES, "name": "some-other-lease"}),
    ("delete", "leases", {**LEASES, "name": "gitward-shard-default"}),
    ("update", "leases", {**LEASES, "namespace": "kube-system", "name": "kube-controller-manager"}),
    ("create", "leases", {**LEASES, "namespace": "kube-system"}),
]


@pytest.mark.parametrize(("verb", "resource", "where"), CAN, ids=[f"{v}-{r}" for v, r, _ in CAN])
def test_the_operator_can(admin, installed, verb, resource, where):
    """Each permission the operator needs is granted."""
    assert allowed(admin, verb, resource, **where)


@pytest.mark.parametrize(("verb", "resource", "where"), CANNOT, ids=[f"{v}-{r}" for v, r, _ in CANNOT])
def test_the_operator_cannot(admin, installed, verb, resource, where):
    """Secrets outside tenant namespaces, cluster-wide RBAC, escalation, other identities: all denied."""
    assert not allowed(admin, verb, resource, **where)


def test_the_least_privilege_is_enough_to_deploy(
    tmp_path, admin, installed, kube_configuration, namespace, as_service_account
):
    """With its own token, the operator fences a tenant namespace and deploys into it as the tenant."""
    operator_api = as_service_account("gitward-system", "gitward", via="token", gitward=True)
    harness = Harness(tmp_path, api=operator_api, configuration=kube_configuration, namespace=namespace)
    harness.operator = Objects(operator_api)
    harness.as_tenant = lambda ns, sa: Objects(  # type: ignore[method-assign]
        clients.impersonating(operator_api.configuration, clients.ServiceAccountRef(ns, sa))
    )
    assert not allowed(admin, "get", "secrets", namespace=namespace)
    harness.push({"deploy/app.yaml": deployment("web"), "deploy/config.yaml": configmap("settings")})
    deployed = harness.deploy(operator_account=clients.ServiceAccountRef("gitward-system", "gitward"))
    assert deployed.unhealthy is None
    assert {c.ref.name for c in deployed.result.changes} == {"web", "settings"}
    assert allowed(admin, "get", "secrets", namespace=namespace)
    assert not allowed(admin, "get", "secrets", namespace="default")
