"""Reading what the pipeline needs from the API: tenants, trusted-key ConfigMaps, git Secrets.

Errors from the client are mapped onto gitward's own: a missing object is a
specific condition reason, anything else (an error answer, or no answer at
all: a transport error from urllib3) is retried later. Secret values never
enter an error message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from gitward.api import resources
from gitward.api.conditions import Reason
from gitward.errors import Stalled, Waiting
from gitward.kube.http import Connection
from gitward.kube.objects import APIError, fetch, path_segment

_NOT_FOUND = 404


_TIMEOUT = (10, 60)  # connect, read: a hung API server must not hold a reconcile's thread


_TENANTS = f"/apis/{resources.GROUP}/{resources.VERSION}/{resources.TENANT.plural}"


def _core_path(namespace: str, plural: str, name: str) -> str:
    """The path of a core object, each segment checked (:class:`InvalidPathSegment` is an APIError)."""
    return f"/api/v1/namespaces/{path_segment(namespace, 'namespace')}/{plural}/{path_segment(name, 'name')}"


def _cause(error: APIError) -> str:
    """What went wrong, without the server's words (they may quote the object): a status, or no answer."""
    return f"HTTP {error.status}" if error.status else error.message


class KubeReader:
    """Reads through one API client (the operator's own identity)."""

    def __init__(self, api: Connection, *, operator_namespace: str) -> None:
        self.api = api
        self.operator_namespace = operator_namespace

    def _get(self, path: str) -> Mapping[str, Any]:
        """One object; :class:`APIError` for an error answer, no answer, or one that is not an object."""
        return fetch(self.api, "GET", path, timeout=_TIMEOUT).json_object()

    def tenant(self, name: str) -> Mapping[str, Any]:
        """The ``GitOpsTenant`` body, or ``Stalled(TenantNotFound)``."""
        try:
            return self._get(f"{_TENANTS}/{path_segment(name, 'name')}")
        except APIError as error:
            if error.status == _NOT_FOUND:
                raise Stalled(Reason.TENANT_NOT_FOUND, f"GitOpsTenant {name!r} does not exist") from None
            raise Waiting(Reason.API_UNAVAILABLE, f"reading GitOpsTenant {name!r}: {_cause(error)}") from None

    def key_config_map(self, name: str) -> Mapping[str, str]:
        """The data of a trusted-key ConfigMap in the operator's namespace."""
        namespace = self.operator_namespace
        try:
            config_map = self._get(_core_path(namespace, "configmaps", name))
        except APIError as error:
            if error.status == _NOT_FOUND:
                raise Stalled(
                    Reason.UNTRUSTED_SIGNER,
                    f"trusted-key ConfigMap {namespace}/{name} does not exist",
                ) from None
            raise Waiting(Reason.API_UNAVAILABLE, f"reading ConfigMap {name!r}: {_cause(error)}") from None
        data = config_map.get("data") or {}
        return {str(key): str(value) for key, value in data.items()}

    def operator_secret(self, name: str) -> Mapping[str, bytes]:
        """A Secret the admin keeps in the operator's namespace (a tenant's age key, registry credentials)."""
        return self.secret_data(self.operator_namespace, name)

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]:
        """The decoded data of a Secret in the app's namespace."""
        try:
            secret = self._get(_core_path(namespace, "secrets", name))
        except APIError as error:
            if error.status == _NOT_FOUND:
                raise Stalled(
                    Reason.FETCH_FAILED, f"Secret {namespace}/{name} (source.secretRef) does not exist"
                ) from None
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading Secret {namespace}/{name}: {_cause(error)}"
            ) from None
        try:
            return {str(key): base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        except (binascii.Error, TypeError, ValueError):  # never quoting the value
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading Secret {namespace}/{name}: unexpected response"
            ) from None
