"""Small helpers for reading the Kubernetes API server's answers in tests."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

from kubernetes import client
from kubernetes.client.rest import ApiException


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
