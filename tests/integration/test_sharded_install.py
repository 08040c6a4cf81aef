"""The sharded install (manifests/sharded/ on top of manifests/): rendered by kustomize, checked, applied.

Each shard must be a Deployment of two leader-elected replicas whose --shard
key is the one its Service and Lease are named for, whose pod spec is the
main instance's but for that key, whose webhook Service selects its own pods
only, and whose Lease the operator may write; nothing here may widen what the
operator can do beyond its shards' Leases.
"""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitward import cli
from gitward.shards import DEFAULT_LEASE, Shard
from support.paths import REPO
from support.toolpaths import kubectl_binary

pytestmark = pytest.mark.cluster
SHARD_LABEL = "gitward.dev/operator-shard"
KEY_ENV = "GITWARD_SHARD"


def allowed(admin, verb, resource, *, namespace, group, name="") -> bool:
    """Whether the operator's ServiceAccount may do this, asked of the API server (a SubjectAccessReview)."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user="system:serviceaccount:gitward-system:gitward",
            groups=[
                "system:serviceaccounts",
                "system:serviceaccounts:gitward-system",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=resource, name=name or None
            ),
        )
    )
    return bool(client.AuthorizationV1Api(admin).create_subject_access_review(review).status.allowed)


def render(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl_binary(), "kustomize", str(REPO / path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render("manifests")


@pytest.fixture(scope="module")
def sharded() -> list[dict[str, Any]]:
    return render("manifests/sharded")


def shard_key(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"][SHARD_LABEL]


def run_args(deployment: dict[str, Any]) -> list[str]:
    """The container's args with $(VAR) expanded as the kubelet would, from the pod's own label."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    source = env[KEY_ENV]["valueFrom"]["fieldRef"]["fieldPath"] if KEY_ENV in env else None
    if source is not None:
        assert source == f"metadata.labels['{SHARD_LABEL}']"
    return [a.replace(f"$({KEY_ENV})", shard_key(deployment)) if source else a for a in container["args"]]


def test_every_shard_is_two_leader_elected_replicas_with_its_own_key(base, sharded):
    """gitward-shard-<key>: 2 replicas, --leader-elect --shard <key>, the key from the pod's own label."""
    deployments = of_kind(sharded, "Deployment")
    assert set(deployments) == {"gitward-shard-a", "gitward-shard-b"}
    parser = cli.build_parser()
    for name, deployment in deployments.items():
        key = shard_key(deployment)
        assert name == f"gitward-shard-{key}"
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": "100%"}
        args = parser.parse_args(run_args(deployment))
        assert (args.shard, args.leader_elect, args.shard_hash) == (key, True, None)
        assert Shard.of(key=args.shard).lease_name == f"gitward-shard-{key}"
    main = of_kind(base, "Deployment")["gitward"]
    args = parser.parse_args(run_args(main))
    assert (args.shard, args.leader_elect, main["spec"]["replicas"]) == (None, True, 2)
    assert Shard.of().lease_name == DEFAULT_LEASE


def test_a_shard_runs_exactly_the_main_instances_pod_but_for_its_key(base, sharded):
    """Image, probes, security, resources, volumes: the same as the main instance, so they cannot drift."""
    main = of_kind(base, "Deployment")["gitward"]["spec"]["template"]["spec"]
    for deployment in of_kind(sharded, "Deployment").values():
        pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
        container = pod["containers"][0]
        key = shard_key(deployment)
        assert container["args"][-1] == f"--shard=$({KEY_ENV})"
        container["args"] = container["args"][:-1]
        container["env"] = [e for e in container["env"] if e["name"] != KEY_ENV]
        term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert (
            term["podAffinityTerm"]["labelSelector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )
        term["podAffinityTerm"]["labelSelector"] = {"matchLabels": {"app.kubernetes.io/name": "gitward"}}
        assert pod == main, f"shard {key} differs from the main instance"


def test_each_webhook_service_routes_to_its_own_shard_only(base, sharded):
    """A Service selects the pods of one Deployment, and only while they are Ready (readiness = the webhook port)."""
    deployments = {**of_kind(base, "Deployment"), **of_kind(sharded, "Deployment")}
    services = {**of_kind(base, "Service"), **of_kind(sharded, "Service")}
    assert set(services) == {"gitward-webhook", "gitward-webhook-shard-a", "gitward-webhook-shard-b"}
    for name, service in services.items():
        selected = [
            d for d, body in deployments.items()
            if selects(service["spec"]["selector"], body["spec"]["template"]["metadata"]["labels"])
        ]  # fmt: skip
        expected = "gitward" if name == "gitward-webhook" else f"gitward-shard-{name.rsplit('-', 1)[1]}"
        assert selected == [expected], name
    for name, deployment in deployments.items():
        # The selectors of two Deployments never overlap.
        others = [
            d for d, body in deployments.items()
            if selects(deployment["spec"]["selector"]["matchLabels"], body["spec"]["template"]["metadata"]["labels"])
        ]  # fmt: skip
        assert others == [name]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["port"] == "webhook"  # a standby serves no webhook
        assert container["livenessProbe"]["httpGet"]["port"] == "health"  # but answers liveness
        args = cli.build_parser().parse_args(run_args(deployment))
        assert args.liveness.endswith(":8080/healthz")
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
            "webhook": args.webhook_port,
            "health": 8080,
        }
    policy = of_kind(base, "NetworkPolicy")["gitward"]["spec"]["podSelector"]["matchLabels"]
    for deployment in deployments.values():
        assert selects(policy, deployment["spec"]["template"]["metadata"]["labels"])


def test_the_operator_may_write_exactly_its_shards_leases(base, sharded):
    """get/update by name: the main instance's Lease and each shard's; create (unnamed) in its namespace."""
    keys = {shard_key(d) for d in of_kind(sharded, "Deployment").values()}
    role = of_kind(sharded, "Role")["gitward-shard-leases"]
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "update"],
            "resourceNames": sorted(Shard(key=k).lease_name for k in keys),
        }
    ]
    binding = of_kind(sharded, "RoleBinding")["gitward-shard-leases"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gitward", "namespace": "gitward-system"}
    ]
    main_role = of_kind(base, "Role")["gitward-leases"]["rules"]
    assert {"get", "update"} == set(main_role[0]["verbs"])
    assert main_role[0]["resourceNames"] == [DEFAULT_LEASE]
    assert main_role[1]["verbs"] == ["create"]


def test_the_sharded_install_applies_and_grants_what_it_says(kubectl, crds, admin):
    """Applied for real on top of the install: the shards exist, and RBAC allows their Leases and nothing more."""
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests"))
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "sharded"))
    apps = client.AppsV1Api(admin)
    for key in ("a", "b"):
        deployment = apps.read_namespaced_deployment(f"gitward-shard-{key}", "gitward-system")
        assert deployment.spec.replicas == 2
        service = client.CoreV1Api(admin).read_namespaced_service(
            f"gitward-webhook-shard-{key}", "gitward-system"
        )
        assert service.spec.selector[SHARD_LABEL] == key
    leases = {"group": "coordination.k8s.io", "namespace": "gitward-system"}
    for name in (DEFAULT_LEASE, "gitward-shard-a", "gitward-shard-b"):
        assert allowed(admin, "get", "leases", name=name, **leases)
        assert allowed(admin, "update", "leases", name=name, **leases)
        assert not allowed(admin, "delete", "leases", name=name, **leases)
    assert allowed(admin, "create", "leases", **leases)
    assert not allowed(admin, "update", "leases", name="gitward-shard-c", **leases)
    assert not allowed(
        admin, "update", "leases", name="kube-scheduler", **{**leases, "namespace": "kube-system"}
    )
