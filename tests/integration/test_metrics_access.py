"""/metrics behind the API server's own authentication and authorization, as kube-rbac-proxy does it."""

from __future__ import annotations

import pytest
from kubernetes import client

from gitward.kube.reviews import MetricsAccess
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def token_for(admin: client.ApiClient, namespace: str, name: str) -> str:
    core = client.CoreV1Api(admin)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    return str(core.create_namespaced_service_account_token(name, namespace, request).status.token)


def test_only_a_token_allowed_to_get_metrics_reads_them(admin, kube_api, namespace):
    """A scraper bound to get /metrics is allowed; another valid token, a forged one and none are not."""
    rbac = client.RbacAuthorizationV1Api(admin)
    reader_role = f"metrics-reader-{namespace}"
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=reader_role),
            rules=[client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=reader_role),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=reader_role
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="prometheus", namespace=namespace)],
        )
    )
    try:
        scraper = token_for(admin, namespace, "prometheus")
        other = token_for(admin, namespace, "someone")
        access = MetricsAccess(kube_api)
        wait_until(
            lambda: MetricsAccess(kube_api).allowed(scraper), timeout=30, what="the binding to take effect"
        )
        assert access.allowed(scraper)
        assert not access.allowed(other)
        assert not access.allowed("not-a-token")
        assert not access.allowed("")
    finally:
        rbac.delete_cluster_role_binding(reader_role)
        rbac.delete_cluster_role(reader_role)
