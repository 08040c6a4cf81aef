"""The per-poll reads are served from memory while a watch keeps them fresh, and are never stale.

Against the real API server: a second read costs no request; a change
made by someone else is seen on the next read after the watch event
arrives (waited for with a deadline, not a sleep); without permission to
watch, every read goes to the API server and is still right.
"""

from __future__ import annotations

import base64

import pytest
from kubernetes import client

from gitward.api import resources
from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.kube.cached import CachedReader
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def configmap(admin: client.ApiClient, namespace: str, name: str, data: dict[str, str]) -> None:
    core = client.CoreV1Api(admin)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)
    try:
        core.create_namespaced_config_map(namespace, body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        core.replace_namespaced_config_map(name, namespace, body)


def test_key_config_maps_are_cached_and_refreshed_by_the_watch(admin, kube_api, namespace):
    """Two reads, one request; an edit is seen after its watch event; a deletion too."""
    configmap(admin, namespace, "keys", {"allowed_signers": "one"})
    reader = CachedReader(kube_api, operator_namespace=namespace)
    try:
        assert reader.key_config_map("keys") == {"allowed_signers": "one"}
        assert reader.key_config_map("keys") == {"allowed_signers": "one"}
        assert reader.reads == 1
        configmap(admin, namespace, "keys", {"allowed_signers": "two"})
        wait_until(
            lambda: reader.key_config_map("keys") == {"allowed_signers": "two"},
            timeout=30,
            what="the edit seen",
        )
        assert reader.reads == 2
        client.CoreV1Api(admin).delete_namespaced_config_map("keys", namespace)

        def gone() -> bool:
            try:
                reader.key_config_map("keys")
            except Stalled as error:
                return error.reason is Reason.UNTRUSTED_SIGNER
            return False

        wait_until(gone, timeout=30, what="the deletion seen")
    finally:
        reader.close()


def test_secrets_are_cached_per_namespace_and_refreshed_by_the_watch(admin, kube_api, namespace):
    """A git Secret is read once; a rotated password is seen after the watch event."""
    core = client.CoreV1Api(admin)

    def secret(password: str) -> client.V1Secret:
        encoded = base64.b64encode(password.encode()).decode()
        return client.V1Secret(metadata=client.V1ObjectMeta(name="git"), data={"password": encoded})

    core.create_namespaced_secret(namespace, secret("first"))
    reader = CachedReader(kube_api, operator_namespace="default")
    try:
        assert reader.secret_data(namespace, "git") == {"password": b"first"}
        assert reader.secret_data(namespace, "git") == {"password": b"first"}
        assert reader.reads == 1
        core.replace_namespaced_secret("git", namespace, secret("rotated"))
        wait_until(
            lambda: reader.secret_data(namespace, "git") == {"password": b"rotated"},
            timeout=30,
            what="the rotated password seen",
        )
    finally:
        reader.close()


def test_tenants_are_cached_only_once_the_tenant_watch_has_spoken(admin, kube_api, crds):
    """Until the operator's tenant watch reports, every read asks the API; after it, one read per change."""
    custom = client.CustomObjectsApi(admin)
    name = "cached-reads-tenant"
    body = {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsTenant",
        "metadata": {"name": name},
        "spec": {
            "namespaces": ["a"],
            "sources": [{"url": "https://git.example.com/*", "branches": ["main"]}],
            "trust": {"keysFrom": [{"configMapRef": {"name": "keys"}}]},
        },
    }
    custom.create_cluster_custom_object(resources.GROUP, resources.VERSION, "gitopstenants", body)
    reader = CachedReader(kube_api, operator_namespace="default")
    try:
        reader.tenant(name)
        reader.tenant(name)
        assert reader.reads == 2
        reader.tenant_changed(name)
        reader.tenant(name)
        reader.tenant(name)
        assert reader.reads == 3
        custom.patch_cluster_custom_object(
            resources.GROUP, resources.VERSION, "gitopstenants", name, {"spec": {"namespaces": ["b"]}}
        )
        reader.tenant_changed(name)
        assert reader.tenant(name)["spec"]["namespaces"] == ["b"]
    finally:
        custom.delete_cluster_custom_object(resources.GROUP, resources.VERSION, "gitopstenants", name)
        reader.close()


def test_without_permission_to_watch_every_read_asks_and_is_right(admin, namespace, as_service_account):
    """An identity that may get but not watch ConfigMaps: nothing is cached, and an edit is seen at once."""
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="get-only"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="get-only"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="get-only"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="getter", namespace=namespace)],
        ),
    )
    configmap(admin, namespace, "keys", {"allowed_signers": "one"})
    api = as_service_account(namespace, "getter", via="impersonation", gitward=True)
    reader = CachedReader(api, operator_namespace=namespace)
    try:
        wait_until(lambda: _readable(reader), timeout=30, what="the Role to reach the authorizer")
        before = reader.reads
        assert reader.key_config_map("keys") == {"allowed_signers": "one"}
        configmap(admin, namespace, "keys", {"allowed_signers": "two"})
        assert reader.key_config_map("keys") == {"allowed_signers": "two"}
        assert reader.reads == before + 2
    finally:
        reader.close()


def _readable(reader: CachedReader) -> bool:
    try:
        reader.key_config_map("keys")
    except Stalled:
        return False
    except Exception:  # noqa: BLE001 - a 403 before the binding is seen is retried
        return False
    return True
