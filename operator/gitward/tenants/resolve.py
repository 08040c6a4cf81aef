"""``tenants.resolve``: what an app may fetch, which keys must have signed it, how to authenticate.

Reads the tenant, its key ConfigMaps and the app's git Secret through a
:class:`Reader` (the Kubernetes API in the operator, a fake in unit tests),
and applies the pure source policy. Everything downstream works from the
returned :class:`ResolvedApp`, never from the raw resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gitward.api import budgets as budgets_module
from gitward.api.budgets import Budgets
from gitward.api.conditions import Reason
from gitward.api.resources import AppSpec, InvalidResourceError, TenantSpec, parse_app_spec, parse_tenant_spec
from gitward.errors import Stalled
from gitward.source.allow import AllowedSource, check_source
from gitward.source.git import Credentials
from gitward.trust.keys import TrustedKeys, from_config_maps
from gitward.trust.verify import TrustSettings


class Reader(Protocol):
    """Where tenants, key ConfigMaps and Secrets come from."""

    def tenant(self, name: str) -> Mapping[str, Any]:
        """The tenant's body, or raise ``Stalled(TenantNotFound)``."""
        ...

    def key_config_map(self, name: str) -> Mapping[str, str]:
        """A trusted-key ConfigMap's data from the operator's namespace."""
        ...

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]:
        """A Secret's decoded data."""
        ...


@dataclass(frozen=True, slots=True)
class ResolvedApp:
    """An app with everything its tenant allows and requires, ready for fetch and verify."""

    namespace: str
    name: str
    uid: str
    spec: AppSpec
    tenant_name: str
    tenant: TenantSpec
    source: AllowedSource
    keys: TrustedKeys
    trust: TrustSettings
    credentials: Credentials | None
    budgets: Budgets = field(default_factory=Budgets)


def resolve(
    app: Mapping[str, Any],
    *,
    reader: Reader,
    allow_file: bool = False,
    ceilings: Budgets = budgets_module.DEFAULT_CEILINGS,
) -> ResolvedApp:
    """Resolve a ``GitOpsApp`` body; raise ``Stalled`` with the reason that stops it."""
    metadata = app.get("metadata") or {}
    namespace = str(metadata.get("namespace", ""))
    try:
        spec = parse_app_spec(app.get("spec") or {})
    except InvalidResourceError as error:
        raise Stalled(
            Reason.INVALID_URL if "url" in str(error) else Reason.POLICY_VIOLATION, str(error)
        ) from None
    tenant_body = reader.tenant(spec.tenant)
    try:
        tenant = parse_tenant_spec(tenant_body.get("spec") or {})
        budgets = budgets_module.from_spec(tenant.limits, ceilings=ceilings)
    except InvalidResourceError as error:
        raise Stalled(
            Reason.TENANT_NOT_FOUND, f"GitOpsTenant {spec.tenant!r} is malformed: {error}"
        ) from None
    allowed = check_source(
        spec, app_namespace=namespace, tenant_name=spec.tenant, tenant=tenant, allow_file=allow_file
    )
    keys = from_config_maps(reader.key_config_map(ref.config_map) for ref in tenant.keys_from)
    credentials = None
    if spec.source.secret_ref:
        credentials = Credentials.from_secret_data(reader.secret_data(namespace, spec.source.secret_ref))
    return ResolvedApp(
        namespace=namespace,
        name=str(metadata.get("name", "")),
        uid=str(metadata.get("uid", "")),
        spec=spec,
        tenant_name=spec.tenant,
        tenant=tenant,
        source=allowed,
        keys=keys,
        trust=TrustSettings(verify=tenant.verify, require_fast_forward=tenant.require_fast_forward),
        credentials=credentials,
        budgets=budgets,
    )
