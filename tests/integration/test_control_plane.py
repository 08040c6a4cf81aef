"""The local control plane is real: ready, RBAC enforced, pods run on kwok, lifecycle clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from support.paths import CLUSTER
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def test_readyz_is_ok(kubectl):
    """`kubectl get --raw /readyz` prints ok with the admin kubeconfig."""
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_server_is_the_pinned_kubernetes_version(admin):
    """The API server reports the version the Go tools module pins, not a dev build."""
    info = client.VersionApi(admin).get_code()
    assert info.git_version.startswith("v1.36.")
    assert info.major == "1"


@pytest.mark.parametrize("via", ["token", "impersonation"])
def test_rbac_denies_a_service_account_until_granted(admin, namespace, as_service_account, via):
    """A fresh ServiceAccount cannot read Secrets; after a RoleBinding it can, in that namespace only."""
    account = as_service_account(namespace, "reader", via=via)
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(account).list_namespaced_secret(namespace)
    assert denied.value.status == 403

    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-secrets"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="read-secrets"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
        ),
    )

    def allowed() -> bool:
        try:
            client.CoreV1Api(account).list_namespaced_secret(namespace)
        except ApiException as error:
            if error.status == 403:
                return False
            raise
        return True

    wait_until(allowed, timeout=10, what="the RoleBinding to take effect")
    with pytest.raises(ApiException) as elsewhere:
        client.CoreV1Api(account).list_namespaced_secret("kube-system")
    assert elsewhere.value.status == 403


def test_a_deployment_becomes_available_on_the_kwok_node(admin, namespace):
    """The scheduler places the pod on the fake node, kwok makes it Ready, the Deployment is Available."""
    labels = {"app": "web"}
    client.AppsV1Api(admin).create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="example.invalid/web:1")]
                    ),
                ),
            ),
        ),
    )

    def available() -> bool:
        status = client.AppsV1Api(admin).read_namespaced_deployment_status("web", namespace).status
        conditions = {c.type: c.status for c in (status.conditions or [])}
        return conditions.get("Available") == "True" and status.ready_replicas == 2

    wait_until(available, timeout=90, what="the Deployment to become Available")
    pods = client.CoreV1Api(admin).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name == "kwok-node-0"
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def test_a_pod_marked_never_ready_stays_unready(admin, namespace):
    """The kwok stage hook later tests rely on: the annotation keeps a pod Running but not Ready."""
    client.CoreV1Api(admin).create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="stuck", annotations={"gitward.dev/kwok-never-ready": "true"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="example.invalid/app:1")]),
        ),
    )

    def running() -> bool:
        return client.CoreV1Api(admin).read_namespaced_pod("stuck", namespace).status.phase == "Running"

    wait_until(running, timeout=60, what="the pod to run")
    pod = client.CoreV1Api(admin).read_namespaced_pod("stuck", namespace)
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"


def _pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_twice_reuses_the_running_cluster(cluster_state):
    """A second `up` on the same state starts nothing new and prints the same KUBECONFIG."""
    if cluster_state is None:
        pytest.skip("the cluster under test was not started by hack/cluster (GITWARD_TEST_KUBECONFIG)")
    before = _pids(cluster_state)
    assert set(before) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    again = subprocess.run(
        [sys.executable, str(CLUSTER), "up", "--state-dir", str(cluster_state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert again.stdout.strip() == f"export KUBECONFIG={cluster_state / 'admin.kubeconfig'}"
    assert "already running" in again.stderr
    assert _pids(cluster_state) == before
    assert all(_alive(pid) for pid in before.values())


def test_down_leaves_no_process_and_no_state(tmp_path):
    """A separate cluster brought up and down leaves no process of its own and no state directory."""
    state = tmp_path / "second"
    up = subprocess.run(
        [sys.executable, str(CLUSTER), "up", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        pids = _pids(state)
        assert len(pids) == 5
        status = subprocess.run(
            [sys.executable, str(CLUSTER), "status", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.returncode == 0
        assert "ready:      yes" in status.stdout
    finally:
        subprocess.run(
            [sys.executable, str(CLUSTER), "down", "--state-dir", str(state)], check=True, capture_output=True
        )
    assert not any(_alive(pid) for pid in pids.values())
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == ""
    assert not state.exists()
