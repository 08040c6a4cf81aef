"""Small helpers for reading the Kubernetes API server's answers in tests."""

from __future__ import annotations

import json

from kubernetes.client.rest import ApiException


def api_error_message(error: ApiException) -> str:
    """The API server's own message from an error response."""
    try:
        return str(json.loads(error.body).get("message", error.body))
    except (TypeError, ValueError):
        return str(error.body)
