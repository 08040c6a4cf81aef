"""Kubernetes API clients: the operator's own, and ones acting as a tenant.

Applies for a tenant run through impersonation of the tenant's
ServiceAccount, so the API server's RBAC is a second wall behind gitward's
own checks. When only the user is impersonated, the API server adds the
ServiceAccount's groups itself (``system:serviceaccounts`` and
``system:serviceaccounts:<namespace>``), so one header is exact.

The clients are gitward's own (:mod:`gitward.kube.http` on urllib3, set up
by :mod:`gitward.kube.config`): the ``kubernetes`` package is not imported
by the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gitward.kube import config, http
from gitward.kube.config import Configuration
from gitward.kube.http import Connection

IMPERSONATE_USER_HEADER: Final = "Impersonate-User"
# Keep-alive connections kept per API server: every reconcile thread shares one client, so the
# pool must hold as many connections as threads use at once, or each overflow is a new TLS handshake.
CONNECTION_POOL_SIZE: Final = http.POOL_SIZE


@dataclass(frozen=True, slots=True)
class ServiceAccountRef:
    """A ServiceAccount by namespace and name."""

    namespace: str
    name: str

    @property
    def username(self) -> str:
        """The name the API server authenticates this ServiceAccount as."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def load_configuration(kubeconfig: str | None = None) -> Configuration:
    """Load in-cluster credentials when running in a pod, else the kubeconfig (``config.ConfigError``)."""
    return config.load(kubeconfig)


def api_client(configuration: Configuration) -> Connection:
    """A client with the operator's own identity, its requests counted by verb."""
    return Connection(configuration, counted=True)


def impersonating(configuration: Configuration, account: ServiceAccountRef) -> Connection:
    """A client whose every request is authorized as ``account`` by the API server."""
    return Connection(configuration, headers={IMPERSONATE_USER_HEADER: account.username})


def connection_parts(configuration: Configuration) -> dict[str, str | bool | None]:
    """What kopf's login needs (``kopf.ConnectionInfo``'s arguments): server, TLS, and the current credential.

    Certificate data is passed as PEM text (kopf writes its own files); the token is
    the one valid now (kopf logs in again when the API server refuses it).
    """
    credential = configuration.credentials.current()
    token = credential.token
    parts: dict[str, str | bool | None] = {
        "server": configuration.host,
        "insecure": configuration.insecure,
        "scheme": "Bearer" if token else None,
        "token": token,
    }
    if configuration.ca_data:
        parts["ca_data"] = configuration.ca_data
    elif configuration.ca_path:
        parts["ca_path"] = configuration.ca_path
    if credential.certificate and credential.private_key:
        parts["certificate_data"], parts["private_key_data"] = credential.certificate, credential.private_key
    else:
        if configuration.certificate_data or configuration.certificate_path:
            key = "certificate_data" if configuration.certificate_data else "certificate_path"
            parts[key] = configuration.certificate_data or configuration.certificate_path
        if configuration.private_key_data or configuration.private_key_path:
            key = "private_key_data" if configuration.private_key_data else "private_key_path"
            parts[key] = configuration.private_key_data or configuration.private_key_path
    if not token and configuration.username:
        parts["username"], parts["password"] = configuration.username, configuration.password
    return parts
