"""`gitward verify`: the source checks on a local repository, against a tenant and keys in the cluster."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from gitward.api import resources
from support.signing import SshIdentity, WorkRepo

pytestmark = pytest.mark.cluster
GITWARD = str(Path(sys.executable).parent / "gitward")


@pytest.fixture
def tenant(admin, crds, namespace, tmp_path):
    signer = SshIdentity.create(tmp_path / "keys", "signer")
    client.CoreV1Api(admin).create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="keys"), data={"allowed_signers": signer.allowed_signers_line()}
        ),
    )
    name = f"cli-{uuid.uuid4().hex[:8]}"
    custom = client.CustomObjectsApi(admin)
    custom.create_cluster_custom_object(
        resources.GROUP, resources.VERSION, "gitopstenants",
        {"apiVersion": resources.API_VERSION, "kind": "GitOpsTenant", "metadata": {"name": name},
         "spec": {"namespaces": [namespace], "sources": [{"url": "https://git.example.com/*", "branches": ["main"]}],
                  "trust": {"keysFrom": [{"configMapRef": {"name": "keys"}}]}}},
    )  # fmt: skip
    yield name, signer
    custom.delete_cluster_custom_object(resources.GROUP, resources.VERSION, "gitopstenants", name)


def verify(kubeconfig, namespace, tenant_name, repo, branch="main"):
    return subprocess.run(
        [GITWARD, "verify", "--kubeconfig", str(kubeconfig), "--operator-namespace", namespace,
         "--tenant", tenant_name, "--repo", str(repo), "--branch", branch],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_verify_explains_a_good_commit_and_refuses_a_bad_one(kubeconfig, namespace, tenant, tmp_path):
    """A signed head is OK with its signer; an unsigned one and a branch the tenant does not allow are refused."""
    name, signer = tenant
    work = WorkRepo.create(tmp_path / "repo")
    good = work.commit(message="signed", sign=signer)
    result = verify(kubeconfig, namespace, name, work.path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK {good}" in result.stdout
    assert signer.fingerprint in result.stdout
    work.commit(message="unsigned")
    refused = verify(kubeconfig, namespace, name, work.path)
    assert refused.returncode == 1
    assert "REFUSED UnsignedCommit" in refused.stdout
    other = verify(kubeconfig, namespace, name, work.path, branch="develop")
    assert other.returncode == 1
    assert "REFUSED BranchNotAllowed" in other.stdout
