"""The CRDs are enforced by the API server itself: good objects in, bad ones out."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from gitward.api import resources
from support.kube import api_error_message
from support.paths import REPO

pytestmark = pytest.mark.cluster

SHA_A = "a" * 40
SHA_B = "b" * 40


def tenant(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "namespaces": ["team-a", "team-a-staging"],
        "sources": [{"url": "https://git.example.com/team-a/*", "branches": ["main", "release/*"]}],
        "trust": {"keysFrom": [{"configMapRef": {"name": "team-a-keys"}}]},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsTenant",
        "metadata": {"name": name},
        "spec": spec,
    }


def app(name: str, **source_overrides: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"url": "https://git.example.com/team-a/web.git"}
    source.update(source_overrides)
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsApp",
        "metadata": {"name": name},
        "spec": {"tenant": "team-a", "source": source},
    }


def revision(name: str) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsRevision",
        "metadata": {"name": name},
        "spec": {
            "app": "web",
            "commit": SHA_A,
            "signer": "SHA256:abc",
            "trigger": "poll",
            "outcome": "Applied",
            "reason": "Succeeded",
            "startedAt": "2026-11-22T10:00:00Z",
            "finishedAt": "2026-11-22T10:00:05Z",
            "changes": [{"kind": "Deployment", "namespace": "team-a", "name": "web", "action": "created"}],
        },
    }


@pytest.fixture
def custom(admin, crds):
    return client.CustomObjectsApi(admin)


def create_app(custom, namespace, body):
    return custom.create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsapps", body
    )


def rejected(call, *args) -> str:
    with pytest.raises(ApiException) as refused:
        call(*args)
    assert refused.value.status == 422, refused.value.body
    return api_error_message(refused.value)


def test_valid_objects_are_accepted_with_their_defaults(custom, namespace):
    """A tenant, an app and a revision are stored, and the server fills in the contract's defaults."""
    name = f"tenant-{namespace}"
    try:
        stored_tenant = custom.create_cluster_custom_object(
            resources.GROUP, resources.VERSION, "gitopstenants", tenant(name)
        )
        assert stored_tenant["spec"]["trust"]["verify"] == "all"
        assert stored_tenant["spec"]["trust"]["requireFastForward"] is True
        assert stored_tenant["spec"]["policy"]["podSecurity"] == "restricted"
        assert stored_tenant["spec"]["isolation"]["networkPolicy"] == "default-deny"
        parsed_tenant = resources.parse_tenant_spec(stored_tenant["spec"])
        assert parsed_tenant.verify is resources.VerifyMode.ALL
    finally:
        custom.delete_cluster_custom_object(resources.GROUP, resources.VERSION, "gitopstenants", name)

    stored_app = create_app(custom, namespace, app("web"))
    spec = stored_app["spec"]
    assert spec["source"]["branch"] == "main"
    assert spec["source"]["interval"] == "1m"
    assert spec["prune"] is True
    assert spec["historyLimit"] == 50
    parsed = resources.parse_app_spec(spec)
    assert parsed.source.interval_seconds == 60.0
    assert parsed.health_timeout_seconds == 300.0

    for url in ("ssh://git@git.example.com/team-a/web.git", "git@git.example.com:team-a/web.git"):
        create_app(custom, namespace, app(f"web-{len(url)}", url=url))
    custom.create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsrevisions", revision("web-1")
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///srv/git/web.git", "https://, ssh:// or user@host:path"),
        ("ext::sh -c touch% /tmp/pwned", "https://, ssh:// or user@host:path"),
        ("http://git.example.com/web.git", "https://, ssh:// or user@host:path"),
        ("--upload-pack=touch /tmp/pwned", "https://, ssh:// or user@host:path"),
        ("git@-oProxyCommand=x:web.git", "https://, ssh:// or user@host:path"),
        ("https://user:hunter2@git.example.com/web.git", "must not embed credentials"),
    ],
)
def test_the_api_server_rejects_unsafe_source_urls(custom, namespace, url, expected):
    """Only https, ssh and scp-like URLs without credentials get past the API server."""
    assert expected in rejected(create_app, custom, namespace, app("web", url=url))


@pytest.mark.parametrize(
    ("interval", "expected"),
    [("-1m", "spec.source.interval"), ("0s", "between 10s and 24h"), ("48h", "between 10s and 24h")],
)
def test_the_api_server_rejects_intervals_out_of_bounds(custom, namespace, interval, expected):
    """A negative, zero or huge interval is refused by schema and CEL."""
    assert expected in rejected(create_app, custom, namespace, app("web", interval=interval))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"branch": "refs/tags/main"}, "plain branch name"),
        ({"branch": "main~1"}, "plain branch name"),
        ({"branch": "HEAD"}, "plain branch name"),
        ({"path": "../other-team"}, "stay inside the repository"),
        ({"path": "/etc"}, "stay inside the repository"),
    ],
)
def test_the_api_server_rejects_ref_expressions_and_escaping_paths(custom, namespace, overrides, expected):
    """Branches are plain names and paths stay relative, before gitward even sees the app."""
    assert expected in rejected(create_app, custom, namespace, app("web", **overrides))


def test_a_revision_cannot_be_edited(custom, namespace):
    """Any change to a stored revision's record is refused; its metadata (labels) may still change."""
    stored = custom.create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, "gitopsrevisions", revision("web-1")
    )
    tampered = copy.deepcopy(stored)
    tampered["spec"]["commit"] = SHA_B
    tampered["spec"]["outcome"] = "Refused"
    message = rejected(
        custom.replace_namespaced_custom_object,
        resources.GROUP,
        resources.VERSION,
        namespace,
        "gitopsrevisions",
        "web-1",
        tampered,
    )
    assert "immutable record" in message
    patched = custom.patch_namespaced_custom_object(
        resources.GROUP,
        resources.VERSION,
        namespace,
        "gitopsrevisions",
        "web-1",
        {"metadata": {"labels": {"gitward.dev/app": "web"}}},
    )
    assert patched["spec"]["commit"] == SHA_A


def test_printer_columns_and_short_names(custom, namespace, kubectl):
    """`kubectl get gapp` shows READY, REASON, REVISION and AGE, found by its short name."""
    create_app(custom, namespace, app("web"))
    custom.patch_namespaced_custom_object_status(
        resources.GROUP,
        resources.VERSION,
        namespace,
        "gitopsapps",
        "web",
        {
            "status": {
                "lastAppliedRevision": SHA_A,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "UnsignedCommit",
                        "message": "commit is not signed",
                        "lastTransitionTime": "2026-11-22T10:00:00Z",
                    }
                ],
            }
        },
    )
    header, row = kubectl("get", "gapp", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "READY", "REASON", "REVISION", "AGE"]
    assert row.split()[:4] == ["web", "False", "UnsignedCommit", SHA_A]
    listed = kubectl("api-resources", "--api-group", resources.GROUP, "--no-headers").stdout
    short_names = {line.split()[0]: line.split()[1] for line in listed.splitlines()}
    assert short_names == {"gitopsapps": "gapp", "gitopsrevisions": "grev", "gitopstenants": "gtenant"}


def test_install_manifests_render(kubectl):
    """`kubectl kustomize manifests/` renders the namespace, CRDs, RBAC and the operator's Deployment."""
    rendered = kubectl("kustomize", str(REPO / "manifests")).stdout
    kinds = sorted(line.split(": ", 1)[1] for line in rendered.splitlines() if line.startswith("kind: "))
    assert kinds.count("CustomResourceDefinition") == 3
    for kind in (
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
    ):
        assert kind in kinds
