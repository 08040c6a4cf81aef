"""The third wall, on the real API server: gitward's ValidatingAdmissionPolicies (manifests/admission.yaml).

Each test acts as a ServiceAccount that RBAC lets do everything (bound to
cluster-admin), so that admission alone is what stops it, and checks a
control case that the same identity may still do: the policies refuse the
fence, gitward's identities, tenant namespace labels, app status and
records, and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from kubernetes import client

from gitward.api import resources
from gitward.api.conditions import Reason
from gitward.api.resources import Trigger
from gitward.history.records import Attempt, Outcome, revision_body
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

FENCE = {"gitward.dev/tenant": "team-a", "app.kubernetes.io/managed-by": "gitward"}


@pytest.fixture
def intruder(admin, namespace, as_service_account) -> client.ApiClient:
    """A workload identity in a tenant namespace that RBAC allows everything (so only admission can refuse)."""
    api = as_service_account(namespace, "intruder", via="impersonation")
    client.RbacAuthorizationV1Api(admin).create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=f"intruder-{namespace}"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="cluster-admin"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="intruder", namespace=namespace)],
        )
    )
    wait_until(lambda: _allowed(api, namespace), timeout=30, what="the binding to reach the authorizer")
    yield api
    client.RbacAuthorizationV1Api(admin).delete_cluster_role_binding(f"intruder-{namespace}")


def _allowed(api: client.ApiClient, namespace: str) -> bool:
    try:
        client.CoreV1Api(api).list_namespaced_config_map(namespace)
    except client.ApiException:
        return False
    return True


def denied(call: Callable[[], object], needle: str) -> None:
    with pytest.raises(client.ApiException) as error:
        call()
    assert error.value.status in (403, 422), error.value
    assert needle in (error.value.body or ""), error.value.body


def test_the_fence_cannot_be_edited_or_deleted_from_inside(admin, intruder, namespace):
    """A fence NetworkPolicy (labelled by gitward) is neither patched nor deleted; an ordinary one is."""
    net_admin, net = client.NetworkingV1Api(admin), client.NetworkingV1Api(intruder)
    for name, labels in (("gitward-default-deny", FENCE), ("team-policy", {})):
        net_admin.create_namespaced_network_policy(
            namespace,
            client.V1NetworkPolicy(
                metadata=client.V1ObjectMeta(name=name, labels=labels),
                spec=client.V1NetworkPolicySpec(
                    pod_selector=client.V1LabelSelector(), policy_types=["Ingress"]
                ),
            ),
        )
    opened = {"spec": {"ingress": [{}]}}
    denied(
        lambda: net.patch_namespaced_network_policy("gitward-default-deny", namespace, opened), "tenant fence"
    )
    denied(lambda: net.delete_namespaced_network_policy("gitward-default-deny", namespace), "tenant fence")
    net.patch_namespaced_network_policy("team-policy", namespace, opened)
    net.delete_namespaced_network_policy("team-policy", namespace)


def test_gitward_roles_and_accounts_cannot_be_bound_from_inside(intruder, namespace):
    """Binding gitward's Role, or binding anything to gitward's ServiceAccount, is refused; a plain binding is not."""
    rbac = client.RbacAuthorizationV1Api(intruder)

    def binding(role: str, account: str) -> client.V1RoleBinding:
        return client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"b-{uuid.uuid4().hex[:6]}"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
        )

    denied(
        lambda: rbac.create_namespaced_role_binding(namespace, binding("gitward-tenant", "intruder")), "roles"
    )
    denied(
        lambda: rbac.create_namespaced_role_binding(namespace, binding("edit", "gitward-tenant")),
        "ServiceAccounts",
    )
    rbac.create_namespaced_role_binding(namespace, binding("view", "intruder"))


def test_no_pod_runs_as_gitward(intruder, namespace):
    """A Pod naming gitward's ServiceAccount is refused at admission; the same Pod as another account is not."""
    core = client.CoreV1Api(intruder)

    def pod(account: str) -> client.V1Pod:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"p-{uuid.uuid4().hex[:6]}"),
            spec=client.V1PodSpec(
                service_account_name=account,
                containers=[client.V1Container(name="c", image="registry.k8s.io/pause")],
            ),
        )

    denied(lambda: core.create_namespaced_pod(namespace, pod("gitward-tenant")), "gitward")
    core.create_namespaced_pod(namespace, pod("intruder"))


def test_tenant_namespace_labels_stay_as_the_operator_set_them(admin, intruder):
    """Pod Security and gitward.dev labels of a tenant namespace cannot be changed, added or removed; others can."""
    name = f"tenant-{uuid.uuid4().hex[:6]}"
    labels = {"gitward.dev/tenant": "team-a", "pod-security.kubernetes.io/enforce": "restricted"}
    client.CoreV1Api(admin).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    core = client.CoreV1Api(intruder)
    try:
        relabel = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
        denied(lambda: core.patch_namespace(name, relabel), "Pod Security")
        remove = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}}
        denied(lambda: core.patch_namespace(name, remove), "Pod Security")
        add = {"metadata": {"labels": {"pod-security.kubernetes.io/warn": "privileged"}}}
        denied(lambda: core.patch_namespace(name, add), "Pod Security")
        core.patch_namespace(name, {"metadata": {"labels": {"team": "a"}}})
    finally:
        client.CoreV1Api(admin).delete_namespace(name)


def test_app_status_and_records_are_written_only_by_the_operator(admin, intruder, namespace, crds):
    """Rewinding status.lastAppliedRevision or forging a GitOpsRevision is refused; editing the app's spec is not."""
    custom_admin, custom = client.CustomObjectsApi(admin), client.CustomObjectsApi(intruder)
    app = {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsApp",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"tenant": "team-a", "source": {"url": "https://git.example.com/a.git"}, "suspend": True},
    }
    custom_admin.create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsapps", app
    )
    rewind = {"status": {"lastAppliedRevision": "a" * 40}}
    denied(
        lambda: custom.patch_namespaced_custom_object_status(
            resources.GROUP, resources.VERSION, namespace, "gitopsapps", "web", rewind
        ),
        "only the gitward operator writes gitopsapps/status",
    )
    created = custom_admin.get_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsapps", "web"
    )
    attempt = Attempt(
        app_namespace=namespace, app_name="web", app_uid=created["metadata"]["uid"], tenant="team-a",
        commit="a" * 40, trigger=Trigger.POLL, outcome=Outcome.APPLIED, reason=Reason.SUCCEEDED,
        message="forged", started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:01Z", generation=1,
    )  # fmt: skip
    record = revision_body(attempt, sequence=1, previous_digest="")
    denied(
        lambda: custom.create_namespaced_custom_object(
            resources.GROUP, resources.VERSION, namespace, "gitopsrevisions", record
        ),
        "only the gitward operator writes gitopsrevisions",
    )
    custom.patch_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsapps", "web", {"spec": {"suspend": False}}
    )


@pytest.fixture
def operator_with_every_permission(admin, as_service_account):
    """gitward's own ServiceAccount, bound to cluster-admin for the test, so that only admission holds it back."""
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="gitward-system")))
    except client.ApiException as error:
        if error.status != 409:
            raise
    name = f"operator-everything-{uuid.uuid4().hex[:6]}"
    api = as_service_account("gitward-system", "gitward", via="impersonation")
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="cluster-admin"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="gitward", namespace="gitward-system")
            ],
        )
    )
    try:
        wait_until(lambda: _allowed(api, "default"), timeout=30, what="the binding to reach the authorizer")
        yield api
    finally:
        rbac.delete_cluster_role_binding(name)


def test_the_operator_itself_is_held_to_its_job(admin, operator_with_every_permission):
    """Even with every RBAC permission, the operator binds only gitward roles in tenant namespaces and relabels no system namespace."""
    api = operator_with_every_permission
    tenant_ns, plain_ns = f"t-{uuid.uuid4().hex[:6]}", f"p-{uuid.uuid4().hex[:6]}"
    core_admin = client.CoreV1Api(admin)
    core_admin.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=tenant_ns, labels={"gitward.dev/tenant": "team-a"})
        )
    )
    core_admin.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=plain_ns)))
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    probe = f"gitward-probe-{uuid.uuid4().hex[:6]}"
    client.RbacAuthorizationV1Api(admin).create_cluster_role(
        client.V1ClusterRole(metadata=client.V1ObjectMeta(name=probe), rules=[])
    )

    def binding(role: str) -> client.V1RoleBinding:
        return client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"b-{uuid.uuid4().hex[:6]}"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="gitward-tenant", namespace=tenant_ns)
            ],
        )

    try:
        denied(
            lambda: rbac.create_namespaced_role_binding(tenant_ns, binding("cluster-admin")),
            "binds only gitward",
        )
        denied(
            lambda: rbac.create_namespaced_role_binding(plain_ns, binding("gitward-tenant")),
            "binds only gitward",
        )
        rbac.create_namespaced_role_binding(tenant_ns, binding(probe))
        relabel = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
        denied(lambda: core.patch_namespace("kube-public", relabel), "system namespace")
        move = {"metadata": {"labels": {"gitward.dev/tenant": "team-b"}}}
        denied(lambda: core.patch_namespace(tenant_ns, move), "from one tenant to another")
        core.patch_namespace(plain_ns, {"metadata": {"labels": {"gitward.dev/tenant": "team-b"}}})
    finally:
        for name in (tenant_ns, plain_ns):
            core_admin.delete_namespace(name)
        client.RbacAuthorizationV1Api(admin).delete_cluster_role(probe)


def test_gitwards_impersonated_account_cannot_write_status_or_records(
    admin, namespace, as_service_account, crds
):
    """The account gitward applies as (gitward-tenant) can write neither app status nor records."""
    api = as_service_account(namespace, "gitward-tenant", via="impersonation")
    custom = client.CustomObjectsApi(api)
    app = {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsApp",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"tenant": "team-a", "source": {"url": "https://git.example.com/a.git"}},
    }
    client.CustomObjectsApi(admin).create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsapps", app
    )
    with pytest.raises(client.ApiException) as status_write:
        custom.patch_namespaced_custom_object_status(
            resources.GROUP,
            resources.VERSION,
            namespace,
            "gitopsapps",
            "web",
            {"status": {"lastAppliedRevision": "x"}},
        )
    assert status_write.value.status == 403
    with pytest.raises(client.ApiException) as record_write:
        custom.create_namespaced_custom_object(
            resources.GROUP,
            resources.VERSION,
            namespace,
            "gitopsrevisions",
            {
                "apiVersion": resources.API_VERSION,
                "kind": "GitOpsRevision",
                "metadata": {"name": "r"},
                "spec": {},
            },
        )
    assert record_write.value.status == 403
