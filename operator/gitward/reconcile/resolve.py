"""``reconcile.resolve``: what an app may fetch, which keys must have signed it, how to authenticate.

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
from gitward.api.resources import (
    AppSource,
    AppSpec,
    InvalidResourceError,
    Namespace,
    TenantName,
    TenantSpec,
    parse_app_spec,
    parse_tenant_spec,
)
from gitward.errors import Stalled
from gitward.source import urls
from gitward.source.allow import AllowedSource, check_branch_name, check_source, glob_match
from gitward.source.credentials import Credentials
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

    def operator_secret(self, name: str) -> Mapping[str, bytes]:
        """A Secret's decoded data from the operator's namespace (age keys, registry credentials)."""
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


def _tenant(reader: Reader, name: str, ceilings: Budgets) -> tuple[TenantSpec, Budgets]:
    tenant_body = reader.tenant(name)
    try:
        tenant = parse_tenant_spec(tenant_body.get("spec") or {})
        return tenant, budgets_module.from_spec(tenant.limits, ceilings=ceilings)
    except InvalidResourceError as error:
        raise Stalled(Reason.TENANT_NOT_FOUND, f"GitOpsTenant {name!r} is malformed: {error}") from None


def resolve(
    app: Mapping[str, Any],
    *,
    reader: Reader,
    allow_file: bool = False,
    ceilings: Budgets = budgets_module.DEFAULT_CEILINGS,
    secrets: bool = True,
) -> ResolvedApp:
    """Resolve a ``GitOpsApp`` body; raise ``Stalled`` with the reason that stops it."""
    metadata = app.get("metadata") or {}
    namespace = str(metadata.get("namespace", ""))
    try:
        spec = parse_app_spec(app.get("spec") or {})
    except InvalidResourceError as error:
        reason = Reason.INVALID_URL if error.field == "spec.source.url" else Reason.POLICY_VIOLATION
        raise Stalled(reason, str(error)) from None
    tenant, budgets = _tenant(reader, spec.tenant, ceilings)
    allowed = check_source(
        spec, app_namespace=namespace, tenant_name=spec.tenant, tenant=tenant, allow_file=allow_file
    )
    keys = (
        from_config_maps(reader.key_config_map(ref.config_map) for ref in tenant.keys_from)
        if secrets
        else from_config_maps(())
    )
    credentials = None
    if secrets and spec.source.secret_ref:
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


def resolve_local(
    repository: str,
    *,
    tenant_name: str,
    branch: str,
    reader: Reader,
    ceilings: Budgets = budgets_module.DEFAULT_CEILINGS,
) -> ResolvedApp:
    """``gitward verify``: a local repository checked against a tenant's branch policy and keys.

    The URL policy does not apply (the repository is the user's own copy);
    the branch must be one some source of the tenant allows.
    """
    check_branch_name(branch)
    tenant, budgets = _tenant(reader, tenant_name, ceilings)
    rules = [rule for rule in tenant.sources if any(glob_match(p, branch) for p in rule.branches)]
    if not rules:
        raise Stalled(
            Reason.BRANCH_NOT_ALLOWED, f"no source of tenant {tenant_name!r} allows branch {branch!r}"
        )
    url = urls.parse(f"file://{repository}", allow_file=True)
    namespace = Namespace(tenant.namespaces[0]) if tenant.namespaces else Namespace("")
    return ResolvedApp(
        namespace=namespace,
        name="cli-verify",
        uid="cli-verify",
        spec=AppSpec(tenant=TenantName(tenant_name), source=AppSource(url=url.for_git, branch=branch)),
        tenant_name=tenant_name,
        tenant=tenant,
        source=AllowedSource(url, branch, rules[0], namespace),
        keys=from_config_maps(reader.key_config_map(ref.config_map) for ref in tenant.keys_from),
        trust=TrustSettings(verify=tenant.verify, require_fast_forward=tenant.require_fast_forward),
        credentials=None,
        budgets=budgets,
    )
