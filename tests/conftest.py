"""Fixtures for tests against a real control plane (integration and e2e tiers).

The session brings up its own cluster with ``hack/cluster`` (etcd,
kube-apiserver with RBAC, controller-manager, scheduler, kwok) in a
throwaway state directory, and takes it down at the end even when tests
fail. Set ``GITWARD_TEST_KUBECONFIG`` to run against a cluster you already
have (kind, for example) instead.

Two kinds of client are at hand: ``admin`` is the ``kubernetes`` package's
(the test harness's own hands: typed helpers for setting up and checking),
and ``kube_api`` is gitward's own connection (:mod:`gitward.kube.http`), the
one the operator uses and the one passed into gitward's classes.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException

from gitward.kube import clients
from gitward.kube.config import Configuration, Credential, StaticCredentials
from gitward.kube.http import Connection
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
def kube_configuration(kubeconfig: Path) -> Configuration:
    """gitward's admin configuration (the identity of the test harness, not of a tenant)."""
    return clients.load_configuration(str(kubeconfig))


@pytest.fixture(scope="session")
def kube_api(kube_configuration: Configuration) -> Iterator[Connection]:
    """gitward's own client with cluster-admin rights, as the operator makes it."""
    api = clients.api_client(kube_configuration)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def admin_configuration(kubeconfig: Path) -> client.Configuration:
    """The ``kubernetes`` package's admin configuration, for the tests' own typed requests."""
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return configuration


@pytest.fixture(scope="session")
def admin(admin_configuration: client.Configuration) -> Iterator[client.ApiClient]:
    """A ``kubernetes`` API client with cluster-admin rights (the harness's, never passed to gitward)."""
    api = client.ApiClient(admin_configuration)
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
    admin: client.ApiClient, admin_configuration: client.Configuration, kube_configuration: Configuration
) -> Iterator[Callable[..., client.ApiClient | Connection]]:
    """Return clients that act as a given ServiceAccount, so least privilege is tested for real.

    ``via="token"`` authenticates with a short-lived token from the TokenRequest
    API (the API server checks the token's signature); ``via="impersonation"``
    sends the ``Impersonate-User`` header, as the operator does for tenants.
    The ServiceAccount is created if it does not exist. With ``gitward=True``
    the client is gitward's own connection (to pass into gitward's classes),
    else the ``kubernetes`` package's.
    """
    made: list[client.ApiClient | Connection] = []
    core = client.CoreV1Api(admin)

    def factory(
        namespace: str, name: str, *, via: str = "token", gitward: bool = False
    ) -> client.ApiClient | Connection:
        try:
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        except ApiException as error:
            if error.status != 409:
                raise
        account = clients.ServiceAccountRef(namespace, name)
        api: client.ApiClient | Connection
        if via == "impersonation" and gitward:
            api = clients.impersonating(kube_configuration, account)
        elif via == "impersonation":
            api = client.ApiClient(admin_configuration)
            api.set_default_header(clients.IMPERSONATE_USER_HEADER, account.username)
        elif via == "token":
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
            )
            token = core.create_namespaced_service_account_token(name, namespace, request).status.token
            if gitward:
                api = Connection(
                    dataclasses.replace(
                        kube_configuration,
                        certificate_path=None,
                        private_key_path=None,
                        certificate_data=None,
                        private_key_data=None,
                        credentials=StaticCredentials(Credential(token=token)),
                    )
                )
            else:
                configuration = client.Configuration()
                configuration.host = admin_configuration.host
                configuration.ssl_ca_cert = admin_configuration.ssl_ca_cert
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
