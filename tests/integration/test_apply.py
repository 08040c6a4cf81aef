"""Render, policy, fence and apply against the real control plane, with RBAC and impersonation.

A valid commit is applied as the tenant's ServiceAccount and its Deployment
becomes Available through kwok; every attack class is refused with its
reason and leaves the namespace exactly as it was; the API server itself
refuses what gitward's policy would have, when the policy is bypassed.
"""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.api.resources import ChangeAction
from gitward.apply.inventory import OWNER_ANNOTATION
from gitward.apply.run import Applier
from gitward.errors import GitwardError
from gitward.fence.baseline import TENANT_SERVICE_ACCOUNT
from gitward.kube.objects import APIError
from gitward.render.limits import Limits
from gitward.render.manifests import Manifest
from support.kube import temporary_namespace
from support.pipeline import Harness, configmap, deployment, snapshot
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def harness(tmp_path, kube_api, kube_configuration, namespace, crds) -> Harness:
    return Harness(tmp_path, api=kube_api, configuration=kube_configuration, namespace=namespace)


@pytest.fixture
def other_namespace(admin):
    with temporary_namespace(admin, "t-other") as name:
        yield name


def actions(deployed) -> dict[str, str]:
    return {f"{c.ref.kind}/{c.ref.name}": str(c.action) for c in deployed.result.changes}


def test_a_valid_commit_is_applied_as_the_tenant_and_becomes_available(harness, admin):
    """Deployment, Service, ServiceAccount and ConfigMap applied; the Deployment goes Available on kwok."""
    service = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    harness.push(
        {
            "deploy/deployment.yaml": deployment("web", replicas=2),
            "deploy/service.yaml": service,
            "deploy/config.yaml": configmap("settings", mode="prod"),
            "deploy/sa.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web}\n",
        }
    )
    first = harness.deploy()
    assert actions(first) == {
        "ConfigMap/settings": "created",
        "ServiceAccount/web": "created",
        "Service/web": "created",
        "Deployment/web": "created",
    }
    status = client.AppsV1Api(admin).read_namespaced_deployment_status("web", harness.namespace).status
    assert {c.type: c.status for c in status.conditions}["Available"] == "True"
    assert status.available_replicas == 2
    live = client.CoreV1Api(admin).read_namespaced_config_map("settings", harness.namespace)
    assert live.metadata.annotations[OWNER_ANNOTATION] == f"{harness.namespace}/web"
    managers = {entry.manager for entry in live.metadata.managed_fields}
    assert "gitward" in managers
    assert len(first.result.inventory) == 4

    again = harness.deploy()
    assert set(actions(again).values()) == {"unchanged"}

    harness.push({"deploy/config.yaml": configmap("settings", mode="canary")})
    changed = harness.deploy()
    assert actions(changed)["ConfigMap/settings"] == "updated"
    assert actions(changed)["Deployment/web"] == "unchanged"


GOOD = {"deploy/base.yaml": configmap("base")}
NEW_GOOD = {"deploy/new.yaml": configmap("new-object")}

ATTACKS = {
    "cluster-scoped kind": (
        {"deploy/crb.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: x}\n"
         "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: []\n"},
        Reason.FORBIDDEN_KIND,
    ),
    "another namespace": (
        {"deploy/cm.yaml": configmap("escape").replace("metadata:\n", "metadata:\n  namespace: kube-system\n")},
        Reason.NAMESPACE_VIOLATION,
    ),
    "privileged pod": (
        {"deploy/pod.yaml": deployment("evil").replace("allowPrivilegeEscalation: false", "privileged: true")},
        Reason.POLICY_VIOLATION,
    ),
    "escalating role": (
        {"deploy/role.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: x}\n"
         "rules: [{apiGroups: [''], resources: [pods], verbs: [escalate]}]\n"},
        Reason.POLICY_VIOLATION,
    ),
    "plaintext secret": (
        {"deploy/secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: x}\n"},
        Reason.PLAINTEXT_SECRET,
    ),
    "fence by name": (
        {"deploy/np.yaml": "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
         "metadata: {name: gitward-default-deny}\nspec: {podSelector: {}, ingress: [{}], egress: [{}]}\n"},
        Reason.POLICY_VIOLATION,
    ),
    "yaml bomb": (
        {"deploy/bomb.yaml": 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
         + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))},
        Reason.YAML_REJECTED,
    ),
    "duplicate key": (
        {"deploy/dup.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dup}\ndata: {a: '1'}\ndata: {a: '2'}\n"},
        Reason.DUPLICATE_KEY,
    ),
    "remote base": (
        {"deploy/kustomization.yaml": "resources:\n- base.yaml\n- https://example.com/evil//x?ref=v1\n"},
        Reason.REMOTE_REF_FORBIDDEN,
    ),
    "kustomize escape": (
        {"deploy/kustomization.yaml": "resources:\n- ../../../../../../etc/kubernetes\n"},
        Reason.PATH_ESCAPE,
    ),
    "rejected by the server": (
        {"deploy/svc.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 70000}]}\n"},
        Reason.DRY_RUN_FAILED,
    ),
    "forbidden by rbac": (
        {"deploy/role.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: exec}\n"
         "rules: [{apiGroups: [''], resources: [pods/exec], verbs: [create]}]\n"},
        Reason.APPLY_FORBIDDEN,
    ),
}  # fmt: skip


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_attack_is_refused_and_nothing_is_written(harness, attack):
    """A good object next to a bad one: refused with the reason, and the namespace is unchanged."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    files, reason = ATTACKS[attack]
    harness.push({**NEW_GOOD, **files})
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    assert refused.value.reason is reason, refused.value.message
    assert snapshot(harness.operator, harness.namespace) == before


def test_a_symlink_out_of_the_repository_is_refused_and_nothing_is_written(harness):
    """SymlinkOutOfBounds through the whole pipeline, namespace unchanged."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    harness.push(NEW_GOOD, symlinks={"deploy/hosts.yaml": "/etc/hosts"})
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    assert refused.value.reason is Reason.SYMLINK_OUT_OF_BOUNDS
    assert snapshot(harness.operator, harness.namespace) == before


def test_an_object_owned_by_someone_else_is_not_taken_over(harness, admin):
    """A ConfigMap created outside gitward is OwnershipConflict; it keeps its data."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    client.CoreV1Api(admin).create_namespaced_config_map(
        harness.namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="taken"), data={"owner": "human"}),
    )
    harness.push({**NEW_GOOD, "deploy/taken.yaml": configmap("taken", owner="gitward")})
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    assert refused.value.reason is Reason.OWNERSHIP_CONFLICT
    assert snapshot(harness.operator, harness.namespace) == before
    assert client.CoreV1Api(admin).read_namespaced_config_map("taken", harness.namespace).data == {
        "owner": "human"
    }


def test_too_large_is_refused_and_nothing_is_written(harness):
    """ManifestTooLarge through the whole pipeline, with a small per-file limit."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    harness.push({**NEW_GOOD, "deploy/huge.yaml": configmap("huge", blob="x" * 5000)})
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False, limits=Limits(max_file_bytes=4096))
    assert refused.value.reason is Reason.MANIFEST_TOO_LARGE
    assert "deploy/huge.yaml" in refused.value.message
    assert snapshot(harness.operator, harness.namespace) == before


def test_the_api_server_refuses_another_namespace_even_when_policy_is_bypassed(harness, other_namespace):
    """Second wall: the apply layer, called directly as tenant A, cannot write into namespace B."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    applier = Applier(harness.as_tenant(harness.namespace, TENANT_SERVICE_ACCOUNT), owner="x/y")
    intruder = Manifest(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "intruder", "namespace": other_namespace},
        },
        "direct",
        0,
    )
    before = snapshot(harness.operator, other_namespace)
    with pytest.raises(GitwardError) as refused:
        applier.dry_run([intruder])
    assert refused.value.reason is Reason.APPLY_FORBIDDEN
    assert "forbidden" in refused.value.message.lower()
    with pytest.raises(APIError) as direct:
        harness.as_tenant(harness.namespace, TENANT_SERVICE_ACCOUNT).apply(
            applier_body(intruder), field_manager="gitward"
        )
    assert direct.value.status == 403
    assert snapshot(harness.operator, other_namespace) == before


def applier_body(manifest: Manifest) -> dict:
    return dict(manifest.obj)


def test_pruning_and_the_empty_source_guard(harness):
    """A removed object is pruned; removing most or all of them is EmptySource unless allowed."""
    harness.push({f"deploy/{n}.yaml": configmap(n) for n in "abcd"})
    harness.deploy(wait=False)
    harness.push({}, remove=("deploy/d.yaml",))
    pruned = harness.deploy(wait=False)
    assert actions(pruned)["ConfigMap/d"] == "pruned"
    assert harness.operator.get(ObjectRef("", "v1", "ConfigMap", harness.namespace, "d")) is None

    harness.push(
        {"deploy/e.yaml": configmap("e")}, remove=("deploy/a.yaml", "deploy/b.yaml", "deploy/c.yaml")
    )
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    assert refused.value.reason is Reason.EMPTY_SOURCE
    assert "3 of the 3" in refused.value.message
    assert snapshot(harness.operator, harness.namespace) == before

    harness.push({"deploy/README.md": "nothing here"}, remove=("deploy/e.yaml",))
    with pytest.raises(GitwardError) as empty:
        harness.deploy(wait=False)
    assert empty.value.reason is Reason.EMPTY_SOURCE
    assert snapshot(harness.operator, harness.namespace) == before

    harness.app_spec["pruneGuard"] = {"allowEmpty": True}
    emptied = harness.deploy(wait=False)
    assert sorted(c.ref.name for c in emptied.result.changes if c.action is ChangeAction.PRUNED) == [
        "a",
        "b",
        "c",
    ]
    assert emptied.result.inventory == ()


def test_a_commit_that_deletes_the_source_path_is_empty_source_and_guarded(harness):
    """Deleting the whole manifest directory is EmptySource, naming the path; allowEmpty prunes it all."""
    harness.push({f"deploy/{n}.yaml": configmap(n) for n in "ab"})
    harness.deploy(wait=False)
    harness.push({"README.md": "moved away"}, remove=("deploy",))
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    assert refused.value.reason is Reason.EMPTY_SOURCE
    assert "source.path 'deploy' does not exist in this commit" in refused.value.message
    assert "would delete all 2" in refused.value.message
    assert snapshot(harness.operator, harness.namespace) == before

    harness.app_spec["pruneGuard"] = {"allowEmpty": True}
    emptied = harness.deploy(wait=False)
    assert sorted(c.ref.name for c in emptied.result.changes if c.action is ChangeAction.PRUNED) == ["a", "b"]
    assert emptied.run.notes[0] == "source.path 'deploy' does not exist in this commit: it has no objects"


def test_the_fence_is_in_place_and_idempotent(harness, admin):
    """PSA labels, default-deny with DNS, quota, limit range, tenant SA/Role/Binding; a second ensure changes nothing."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    ns = client.CoreV1Api(admin).read_namespace(harness.namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns.metadata.labels["gitward.dev/tenant"] == harness.tenant_name
    policy = client.NetworkingV1Api(admin).read_namespaced_network_policy(
        "gitward-default-deny", harness.namespace
    )
    assert policy.spec.pod_selector.match_labels is None
    assert sorted(policy.spec.policy_types) == ["Egress", "Ingress"]
    assert not policy.spec.ingress
    assert {p.port for p in policy.spec.egress[0].ports} == {53}
    quota = client.CoreV1Api(admin).read_namespaced_resource_quota("gitward-quota", harness.namespace)
    assert quota.spec.hard["pods"] == "20"
    limits = client.CoreV1Api(admin).read_namespaced_limit_range("gitward-limits", harness.namespace)
    assert limits.spec.limits[0].default["cpu"] == "100m"
    role = client.RbacAuthorizationV1Api(admin).read_namespaced_role(
        TENANT_SERVICE_ACCOUNT, harness.namespace
    )
    granted = {r for rule in role.rules for r in rule.resources}
    assert "deployments" in granted
    assert "resourcequotas" not in granted
    assert "limitranges" not in granted

    before = snapshot(harness.operator, harness.namespace)
    harness.deploy(wait=False)
    assert snapshot(harness.operator, harness.namespace) == before


def test_the_fence_cannot_be_removed_by_the_tenant(harness, admin):
    """Through Git the fence's names are refused; directly, the tenant SA may not touch quota or its Role."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    tenant = harness.as_tenant(harness.namespace, TENANT_SERVICE_ACCOUNT)
    for ref in (
        ObjectRef("", "v1", "ResourceQuota", harness.namespace, "gitward-quota"),
        ObjectRef("", "v1", "LimitRange", harness.namespace, "gitward-limits"),
    ):
        with pytest.raises(APIError) as denied:
            tenant.delete(ref)
        assert denied.value.status == 403
    with pytest.raises(APIError) as denied_role:
        tenant.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": TENANT_SERVICE_ACCOUNT, "namespace": harness.namespace},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
            },
            field_manager="gitward",
        )
    assert denied_role.value.status == 403
    harness.push(
        {
            "deploy/quota.yaml": "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: gitward-quota}\nspec: {}\n"
        }
    )
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    assert refused.value.reason is Reason.FORBIDDEN_KIND
    assert client.CoreV1Api(admin).read_namespaced_resource_quota("gitward-quota", harness.namespace)


def test_pod_security_admission_backs_the_policy(harness, admin):
    """The PSA label is live: even the admin cannot create a pod that breaks `restricted` there."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="root"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
    )
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(admin).create_namespaced_pod(harness.namespace, pod)
    assert denied.value.status == 403
    assert "PodSecurity" in denied.value.body


def test_network_isolation_can_be_turned_off(harness, admin):
    """networkPolicy: none removes the default-deny policy on the next ensure."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    harness.tenant_spec["isolation"] = {"networkPolicy": "none"}
    harness.deploy(wait=False)
    policies = client.NetworkingV1Api(admin).list_namespaced_network_policy(harness.namespace).items
    assert [p.metadata.name for p in policies] == []


def test_a_deployment_that_never_becomes_ready_times_out(harness):
    """A Deployment whose pods stay unready fails its health check with HealthTimeout."""
    harness.app_spec["healthTimeout"] = "3s"
    harness.push(
        {"deploy/web.yaml": deployment("stuck", pod_annotations={"gitward.dev/kwok-never-ready": "true"})}
    )
    deployed = harness.deploy()
    assert deployed.unhealthy is not None
    assert deployed.unhealthy.reason is Reason.HEALTH_TIMEOUT
    assert "Deployment.apps" in deployed.unhealthy.message
    wait_until(
        lambda: harness.operator.get(ObjectRef("apps", "v1", "Deployment", harness.namespace, "stuck")),
        timeout=5,
        what="the deployment to exist",
    )


CLIMB_OUTS = {
    "deploy/svc.yaml": (
        "apiVersion: v1\nkind: Service\nmetadata: {name: grab}\n"
        "spec: {type: NodePort, externalIPs: [10.96.0.1], ports: [{port: 443}]}\n"
    ),
    "deploy/bind.yaml": (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: open}\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\n"
        "subjects: [{kind: Group, name: 'system:unauthenticated'}, {kind: ServiceAccount, name: gitward-tenant,"
        " namespace: other}]\n"
    ),
    "deploy/claim.yaml": (
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: steal}\n"
        "spec: {volumeName: someone-elses, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n"
    ),
}


def test_a_signed_commit_that_climbs_out_is_refused_with_every_violation_and_nothing_written(harness):
    """NodePort, externalIPs, a binding for unauthenticated users and gitward's account, a stolen volume: all listed."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    harness.push({**NEW_GOOD, **CLIMB_OUTS})
    before = snapshot(harness.operator, harness.namespace)
    with pytest.raises(GitwardError) as refused:
        harness.deploy(wait=False)
    message = refused.value.message
    for needle in (
        "spec.type NodePort",
        "CVE-2020-8554",
        "system:unauthenticated",
        "gitward-tenant",
        "someone-elses",
    ):
        assert needle in message, message
    assert snapshot(harness.operator, harness.namespace) == before


def test_the_impersonated_account_is_never_given_a_token(harness, admin):
    """gitward-tenant, the account gitward acts as, does not automount a token into any Pod."""
    harness.push(GOOD)
    harness.deploy(wait=False)
    account = client.CoreV1Api(admin).read_namespaced_service_account("gitward-tenant", harness.namespace)
    assert account.automount_service_account_token is False
