"""Fixtures for tests against a real control plane (integration and e2e tiers).

The session brings up its own cluster with ``hack/cluster`` (etcd,
kube-apiserver with RBAC, controller-manager, scheduler, kwok) in a
throwaway state directory, and takes it down at the end even when tests
fail. Set ``GITWARD_TEST_KUBECONFIG`` to run against a cluster you already
have (kind, for example) instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from gitward.kube import clients
from support.kube import hack_cluster, temporary_namespace
from support.paths import CLUSTER, CRDS
from support.signing import stop_gpg_agents
from support.waiting import wait_until


def _cluster(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return hack_cluster(*args, timeout=1800)  # the first `up` builds the control plane


@pytest.fixture(scope="session")
def cluster_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """The state directory of the session's own cluster (None for an external one)."""
    if os.environ.get("GITWARD_TEST_KUBECONFIG"):
        yield None
        return
    state = tmp_path_factory.mktemp("cluster")
    started = _cluster("up", "--state-dir", state)
    try:
        if started.returncode != 0:
            pytest.fail(f"hack/cluster up failed:\n{started.stderr[-6000:]}", pytrace=False)
        yield state
    finally:
        _cluster("down", "--state-dir", state)


@pytest.fixture(scope="session")
def kubeconfig(cluster_state: Path | None) -> Path:
    """Path of an admin kubeconfig for the cluster under test."""
    if cluster_state is None:
        return Path(os.environ["GITWARD_TEST_KUBECONFIG"])
    return cluster_state / "admin.kubeconfig"


@pytest.fixture(scope="session")
def kube_configuration(kubeconfig: Path) -> client.Configuration:
    """The admin client configuration (the identity of the test harness, not of a tenant)."""
    return clients.load_configuration(str(kubeconfig))


@pytest.fixture(scope="session")
def admin(kube_configuration: client.Configuration) -> Iterator[client.ApiClient]:
    """An API client with cluster-admin rights."""
    api = clients.api_client(kube_configuration)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the kubectl built with the control plane against the cluster under test."""
    built = subprocess.run(
        [sys.executable, "-c", f"import runpy; m = runpy.run_path({str(CLUSTER)!r}); print(m['bin_dir']())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    binary = Path(built) / "kubectl"
    executable = str(binary) if binary.exists() else "kubectl"

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [executable, "--kubeconfig", str(kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    return run


@pytest.fixture
def namespace(admin: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    with temporary_namespace(admin) as name:
        yield name


@pytest.fixture
def as_service_account(
    admin: client.ApiClient, kube_configuration: client.Configuration
) -> Iterator[Callable[..., client.ApiClient]]:
    """Return clients that act as a given ServiceAccount, so least privilege is tested for real.

    ``via="token"`` authenticates with a short-lived token from the TokenRequest
    API (the API server checks the token's signature); ``via="impersonation"``
    uses gitward's own impersonating client, as the operator does for tenants.
    The ServiceAccount is created if it does not exist.
    """
    made: list[client.ApiClient] = []
    core = client.CoreV1Api(admin)

    def factory(namespace: str, name: str, *, via: str = "token") -> client.ApiClient:
        try:
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        except ApiException as error:
            if error.status != 409:
                raise
        if via == "impersonation":
            api = clients.impersonating(kube_configuration, clients.ServiceAccountRef(namespace, name))
        elif via == "token":
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
            )
            token = core.create_namespaced_service_account_token(name, namespace, request).status.token
            configuration = client.Configuration()
            configuration.host = kube_configuration.host
            configuration.ssl_ca_cert = kube_configuration.ssl_ca_cert
            configuration.verify_ssl = True
            configuration.api_key = {"authorization": f"Bearer {token}"}
            api = client.ApiClient(configuration)
        else:
            raise ValueError(f"unknown identity mode {via!r}")
        made.append(api)
        return api

    try:
        yield factory
    finally:
        for api in made:
            api.close()


@pytest.fixture(scope="session")
def crds(admin: client.ApiClient) -> list[str]:
    """Install gitward's CRDs into the cluster (idempotent) and wait until they are served."""
    extensions = client.ApiextensionsV1Api(admin)
    names = []
    for path in sorted(CRDS.glob("gitward.dev_*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        names.append(name)
        try:
            extensions.create_custom_resource_definition(body)
        except ApiException as error:
            if error.status != 409:
                raise
            current = extensions.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(name, body)

    def established() -> bool:
        for name in names:
            crd = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") != "True":
                return False
        return True

    wait_until(established, timeout=60, what="the CRDs to be established")
    return names


@pytest.fixture(scope="session", autouse=True)
def no_gpg_agent_left_behind() -> Iterator[None]:
    """Every gpg-agent the test identities started is stopped when the session ends, failed or not."""
    try:
        yield
    finally:
        stop_gpg_agents()
