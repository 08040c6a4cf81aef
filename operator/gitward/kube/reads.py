"""Reading what the pipeline needs from the API: tenants, trusted-key ConfigMaps, git Secrets.

Errors from the client are mapped onto gitward's own: a missing object is a
specific condition reason, anything else (an error answer, or no answer at
all: a transport error from urllib3) is retried later. Secret values never
enter an error message.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException
from urllib3.exceptions import HTTPError

from gitward.api import resources
from gitward.api.conditions import Reason
from gitward.errors import Stalled, Waiting

_NOT_FOUND = 404


_TIMEOUT = (10, 60)  # connect, read: a hung API server must not hold a reconcile's thread


class KubeReader:
    """Reads through one API client (the operator's own identity)."""

    def __init__(self, api: client.ApiClient, *, operator_namespace: str) -> None:
        self.api = api
        self.operator_namespace = operator_namespace

    def tenant(self, name: str) -> Mapping[str, Any]:
        """The ``GitOpsTenant`` body, or ``Stalled(TenantNotFound)``."""
        try:
            body = client.CustomObjectsApi(self.api).get_cluster_custom_object(
                resources.GROUP, resources.VERSION, resources.TENANT.plural, name, _request_timeout=_TIMEOUT
            )
        except ApiException as error:
            if error.status == _NOT_FOUND:
                raise Stalled(Reason.TENANT_NOT_FOUND, f"GitOpsTenant {name!r} does not exist") from None
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading GitOpsTenant {name!r}: HTTP {error.status}"
            ) from None
        except (HTTPError, OSError) as error:
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading GitOpsTenant {name!r}: {type(error).__name__}"
            ) from None
        if not isinstance(body, Mapping):
            raise Waiting(Reason.API_UNAVAILABLE, f"reading GitOpsTenant {name!r}: unexpected response")
        return body

    def key_config_map(self, name: str) -> Mapping[str, str]:
        """The data of a trusted-key ConfigMap in the operator's namespace."""
        try:
            config_map = client.CoreV1Api(self.api).read_namespaced_config_map(
                name, self.operator_namespace, _request_timeout=_TIMEOUT
            )
        except ApiException as error:
            if error.status == _NOT_FOUND:
                raise Stalled(
                    Reason.UNTRUSTED_SIGNER,
                    f"trusted-key ConfigMap {self.operator_namespace}/{name} does not exist",
                ) from None
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading ConfigMap {name!r}: HTTP {error.status}"
            ) from None
        except (HTTPError, OSError) as error:
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading ConfigMap {name!r}: {type(error).__name__}"
            ) from None
        data: Mapping[str, str] = config_map.data or {}
        return data

    def operator_secret(self, name: str) -> Mapping[str, bytes]:
        """A Secret the admin keeps in the operator's namespace (a tenant's age key, registry credentials)."""
        return self.secret_data(self.operator_namespace, name)

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]:
        """The decoded data of a Secret in the app's namespace."""
        try:
            secret = client.CoreV1Api(self.api).read_namespaced_secret(
                name, namespace, _request_timeout=_TIMEOUT
            )
        except ApiException as error:
            if error.status == _NOT_FOUND:
                raise Stalled(
                    Reason.FETCH_FAILED, f"Secret {namespace}/{name} (source.secretRef) does not exist"
                ) from None
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading Secret {namespace}/{name}: HTTP {error.status}"
            ) from None
        except (HTTPError, OSError) as error:
            raise Waiting(
                Reason.API_UNAVAILABLE, f"reading Secret {namespace}/{name}: {type(error).__name__}"
            ) from None
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
