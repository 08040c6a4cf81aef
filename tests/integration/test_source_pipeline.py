"""The source half of the pipeline end to end: tenant and keys from the real API, git over HTTPS.

The operator's own steps (``gitward.reconcile.steps``, resolve to trust) resolve the app against its GitOpsTenant (read
from the API server), fetches with the credentials from the app's Secret,
and verifies signatures with the keys from the tenant's ConfigMaps. Every
refusal raises; nothing from a refused commit reaches a later step.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from gitward.api import resources
from gitward.api.conditions import Reason
from gitward.errors import GitwardError
from gitward.kube.objects import Objects
from gitward.kube.reads import KubeReader
from gitward.reconcile.state import Run, Services
from gitward.reconcile.status import Step
from gitward.reconcile.steps import run_steps
from gitward.source import git
from gitward.trust.verify import VerifiedSource
from support.gitservers import HttpsGitServer
from support.kube import temporary_namespace
from support.signing import SshIdentity, WorkRepo

pytestmark = pytest.mark.cluster


@pytest.fixture
def operator_namespace(admin):
    with temporary_namespace(admin, "gw-sys") as name:
        yield name


@pytest.fixture
def world(tmp_path, admin, kube_api, crds, namespace, operator_namespace):
    """A signed repository on an HTTPS server, a tenant that allows it, its keys and the app's Secret."""
    signer = SshIdentity.create(tmp_path / "keys", "signer")
    work = WorkRepo.create(tmp_path / "work")
    work.bare_remote("origin", tmp_path / "srv" / "team-a" / "web.git")
    work.commit({"deploy/cm.yaml": "kind: ConfigMap\n"}, message="first", sign=signer)
    work.push()
    with HttpsGitServer(tmp_path / "srv", tmp_path / "tls") as server:
        tenant_name = f"tenant-{namespace}"
        custom = client.CustomObjectsApi(admin)
        custom.create_cluster_custom_object(
            resources.GROUP,
            resources.VERSION,
            "gitopstenants",
            {
                "apiVersion": resources.API_VERSION,
                "kind": "GitOpsTenant",
                "metadata": {"name": tenant_name},
                "spec": {
                    "namespaces": [namespace],
                    "sources": [{"url": server.url("team-a/*"), "branches": ["main"]}],
                    "trust": {"keysFrom": [{"configMapRef": {"name": "team-a-keys"}}]},
                },
            },
        )
        core = client.CoreV1Api(admin)
        core.create_namespaced_config_map(
            operator_namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="team-a-keys"),
                data={"allowed_signers": signer.allowed_signers_line()},
            ),
        )
        secret = {
            "username": server.username,
            "password": server.password,
            "ca.crt": server.ca_cert.read_text(),
        }
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="web-git"),
                data={k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
            ),
        )
        try:
            yield {
                "server": server,
                "work": work,
                "signer": signer,
                "tenant": tenant_name,
                "namespace": namespace,
                "reader": KubeReader(kube_api, operator_namespace=operator_namespace),
                "options": git.FetchOptions(cache_root=tmp_path / "cache", timeout=20),
            }
        finally:
            custom.delete_cluster_custom_object(
                resources.GROUP, resources.VERSION, "gitopstenants", tenant_name
            )


def app_body(world: dict[str, Any], **source: Any) -> dict[str, Any]:
    spec_source = {
        "url": world["server"].url("team-a/web.git"),
        "branch": "main",
        "secretRef": {"name": "web-git"},
    }
    spec_source.update(source)
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "GitOpsApp",
        "metadata": {"name": "web", "namespace": world["namespace"], "uid": "uid-web"},
        "spec": {"tenant": world["tenant"], "source": spec_source},
    }


def run_pipeline(
    world: dict[str, Any], app: dict[str, Any], last_applied: str | None = None
) -> list[VerifiedSource]:
    """Run the source half, and hand its result to a stand-in for the later steps."""
    handed_on: list[VerifiedSource] = []
    reader: KubeReader = world["reader"]
    objects = Objects(reader.api)
    services = Services(
        reader=reader, operator=objects, as_tenant=lambda _ns, _sa: objects, fetch_options=world["options"]
    )
    run = Run(app=app, services=services, baseline=last_applied or "")
    run_steps(run, stop_after=Step.TRUST)
    assert run.verified is not None
    handed_on.append(run.verified)
    return handed_on


def test_a_signed_commit_passes_the_whole_source_half(world):
    """Tenant from the API, credentials from the Secret, keys from the ConfigMap: verified."""
    handed_on = run_pipeline(world, app_body(world))
    assert [v.commit for v in handed_on] == [world["work"].head()]
    assert handed_on[0].signer.fingerprint == world["signer"].fingerprint


def test_a_missing_tenant_is_tenant_not_found(world):
    """The API server has no such GitOpsTenant: TenantNotFound, and git is never contacted."""
    app = app_body(world)
    app["spec"]["tenant"] = "no-such-tenant"
    with pytest.raises(GitwardError) as error:
        run_pipeline(world, app)
    assert error.value.reason is Reason.TENANT_NOT_FOUND
    assert world["server"].requests == []


def unsigned_head(world):
    world["work"].commit(message="unsigned")
    world["work"].push()


def untrusted_head(world, tmp_path):
    stranger = SshIdentity.create(tmp_path / "stranger", "stranger")
    world["work"].commit(message="by a stranger", sign=stranger)
    world["work"].push()


ATTACKS: dict[str, tuple[Callable[..., dict[str, Any]], Reason]] = {
    "unlisted repository": (
        lambda w: app_body(w, url=w["server"].url("team-b/web.git")),
        Reason.SOURCE_NOT_ALLOWED,
    ),
    "unlisted branch": (lambda w: app_body(w, branch="develop"), Reason.BRANCH_NOT_ALLOWED),
    "ref expression": (lambda w: app_body(w, branch="main~1"), Reason.BRANCH_NOT_ALLOWED),
    "upload-pack injection": (lambda w: app_body(w, url="--upload-pack=touch /tmp/x"), Reason.INVALID_URL),
    "ext transport": (lambda w: app_body(w, url="ext::sh -c touch% /tmp/x"), Reason.INVALID_URL),
    "missing secret": (lambda w: app_body(w, secretRef={"name": "nope"}), Reason.FETCH_FAILED),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_policy_refusals_start_no_git_process(world, attack):
    """Refused by policy before any git process: the server sees no request, nothing is handed on."""
    make_app, reason = ATTACKS[attack]
    with pytest.raises(GitwardError) as error:
        run_pipeline(world, make_app(world))
    assert error.value.reason is reason
    assert world["server"].requests == []


@pytest.mark.parametrize(
    ("tamper", "reason"), [("unsigned", Reason.UNSIGNED_COMMIT), ("untrusted", Reason.UNTRUSTED_SIGNER)]
)
def test_trust_refusals_hand_nothing_on(world, tmp_path, tamper, reason):
    """An unsigned or untrusted head is fetched but refused; no VerifiedSource exists for it."""
    applied = run_pipeline(world, app_body(world))[0].commit
    if tamper == "unsigned":
        unsigned_head(world)
    else:
        untrusted_head(world, tmp_path)
    with pytest.raises(GitwardError) as error:
        run_pipeline(world, app_body(world), last_applied=applied)
    assert error.value.reason is reason
    assert world["work"].head()[:12] in error.value.message


def test_a_force_push_back_is_refused_through_the_pipeline(world):
    """The branch rewound to an older signed commit is NonFastForward, end to end."""
    old = run_pipeline(world, app_body(world))[0].commit
    world["work"].commit(message="v2", sign=world["signer"])
    world["work"].push()
    new = run_pipeline(world, app_body(world), last_applied=old)[0].commit
    world["work"].git("reset", "-q", "--hard", old)
    world["work"].push(force=True)
    with pytest.raises(GitwardError) as error:
        run_pipeline(world, app_body(world), last_applied=new)
    assert error.value.reason is Reason.NON_FAST_FORWARD


def test_a_missing_key_config_map_trusts_nothing(world, admin):
    """If the tenant's key ConfigMap is gone, nothing can be trusted: UntrustedSigner."""
    reader: KubeReader = world["reader"]
    client.CoreV1Api(admin).delete_namespaced_config_map("team-a-keys", reader.operator_namespace)
    with pytest.raises(GitwardError) as error:
        run_pipeline(world, app_body(world))
    assert error.value.reason is Reason.UNTRUSTED_SIGNER


def test_an_app_outside_the_tenants_namespaces_is_refused(world):
    """An app in a namespace its tenant does not own: NamespaceViolation."""
    app = app_body(world)
    app["metadata"]["namespace"] = "default"
    with pytest.raises(GitwardError) as error:
        run_pipeline(world, app)
    assert error.value.reason is Reason.NAMESPACE_VIOLATION
