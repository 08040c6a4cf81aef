"""Kubernetes API clients: the operator's own, and ones acting as a tenant.

Applies for a tenant run through impersonation of the tenant's
ServiceAccount, so the API server's RBAC is a second wall behind gitward's
own checks. When only the user is impersonated, the API server adds the
ServiceAccount's groups itself (``system:serviceaccounts`` and
``system:serviceaccounts:<namespace>``), so one header is exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Final

from kubernetes import client, config

from gitward import metrics

IMPERSONATE_USER_HEADER: Final = "Impersonate-User"
# Keep-alive connections kept per API server: every reconcile thread shares one client, so the
# pool must hold as many connections as threads use at once, or each overflow is a new TLS handshake.
CONNECTION_POOL_SIZE: Final = 64


@dataclass(frozen=True, slots=True)
class ServiceAccountRef:
    """A ServiceAccount by namespace and name."""

    namespace: str
    name: str

    @property
    def username(self) -> str:
        """The name the API server authenticates this ServiceAccount as."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """Load in-cluster credentials when running in a pod, else the kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
        else:
            return configuration
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


def api_client(configuration: client.Configuration) -> client.ApiClient:
    """A client with the operator's own identity, its requests counted by verb."""
    configuration.connection_pool_maxsize = max(
        configuration.connection_pool_maxsize or 0, CONNECTION_POOL_SIZE
    )
    api = client.ApiClient(configuration)
    rest = api.rest_client
    request = rest.request

    def counted(method: str, url: str, *args: object, **kwargs: object) -> object:
        verb = "WATCH" if method == "GET" and "watch=true" in url.lower() else method
        metrics.KUBE_REQUESTS.labels(verb).inc()
        return request(method, url, *args, **kwargs)

    rest.request = counted  # type: ignore[method-assign]
    return api


def impersonating(configuration: client.Configuration, account: ServiceAccountRef) -> client.ApiClient:
    """A client whose every request is authorized as ``account`` by the API server."""
    api = client.ApiClient(copy.deepcopy(configuration))
    api.set_default_header(IMPERSONATE_USER_HEADER, account.username)
    return api


def connection_parts(configuration: client.Configuration) -> dict[str, str | bool | None]:
    """What kopf's login needs from a client configuration: server, TLS files, and a bearer token if any."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return {
        "server": configuration.host,
        "ca_path": configuration.ssl_ca_cert,
        "insecure": not configuration.verify_ssl,
        "certificate_path": configuration.cert_file,
        "private_key_path": configuration.key_file,
        "scheme": scheme or ("Bearer" if token else None),
        "token": token or None,
    }
