"""Small helpers for reading the Kubernetes API server's answers in tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from gitward.kube.leases import Record
from support.paths import CLUSTER


def api_error_message(error: ApiException) -> str:
    """The API server's own message from an error response."""
    try:
        return str(json.loads(error.body).get("message", error.body))
    except (TypeError, ValueError):
        return str(error.body)


@contextlib.contextmanager
def temporary_namespace(admin: client.ApiClient, prefix: str = "t") -> Iterator[str]:
    """A fresh namespace, deleted afterwards (also when the test fails)."""
    core = client.CoreV1Api(admin)
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


@contextlib.contextmanager
def benchmark_cluster() -> Iterator[str]:
    """$KUBECONFIG if set; else a local control plane from hack/cluster, started and stopped around the block."""
    if os.environ.get("KUBECONFIG"):
        yield os.environ["KUBECONFIG"]
        return
    with tempfile.TemporaryDirectory(prefix="gitward-bench-cluster-") as state:
        cli = [sys.executable, str(CLUSTER)]
        subprocess.run([*cli, "up", "--state-dir", state], check=True, stdout=subprocess.DEVNULL)
        try:
            yield str(Path(state) / "admin.kubeconfig")
        finally:
            subprocess.run([*cli, "down", "--state-dir", state], check=False, capture_output=True)


def read_lease(admin: client.ApiClient, namespace: str, name: str) -> Record | None:
    """A Lease as gitward's elector reads it, or None if there is none."""
    try:
        body = client.CoordinationV1Api(admin).read_namespaced_lease(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return Record.of(admin.sanitize_for_serialization(body))
