"""``fence.ensure_namespace``: apply a tenant namespace's fence, idempotently, as the operator."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import MutableMapping
from typing import Any

from gitward.api.refs import ObjectRef
from gitward.api.resources import TenantSpec
from gitward.fence import baseline
from gitward.kube.clients import ServiceAccountRef
from gitward.kube.objects import APIError, Objects
from gitward.policy.kinds import KNOWN, KindInfo, allowed_set

FIELD_MANAGER = "gitward-tenancy"  # kept: live objects already carry this manager


def ensure_namespace(
    objects: Objects,
    ns: str,
    *,
    tenant_name: str,
    tenant: TenantSpec,
    operator_account: ServiceAccountRef | None = None,
    written: MutableMapping[str, str] | None = None,
) -> list[ObjectRef]:
    """Create or update the fence of ``ns``, remove parts the tenant no longer wants, return what exists.

    ``written`` remembers, per namespace, the digest of the fence this process last wrote there:
    the fence is written when the tenant (or the operator's account) changes it, not on every
    deploy. Admission keeps tenants from changing fence objects, so what was written stays.
    """
    discovered: dict[str, KindInfo] = {}
    for key in allowed_set(tenant.allowed_kinds):
        if key not in KNOWN:
            group, _, kind = key.rpartition("/")
            resource = objects.preferred_resource(group, kind)
            if resource is not None:
                discovered[key] = KindInfo(group, kind, resource.plural, resource.namespaced)
    kinds = baseline.allowed_kind_infos(tenant, discovered)
    bodies = baseline.objects_for(ns, tenant_name=tenant_name, tenant=tenant, kinds=kinds)
    bindings = (
        baseline.operator_bindings(
            ns, tenant_name=tenant_name, namespace=operator_account.namespace, name=operator_account.name
        )
        if operator_account is not None
        else []
    )
    absent = baseline.absent_for(tenant)
    digest = hashlib.sha256(json.dumps([bodies, bindings, absent], sort_keys=True).encode()).hexdigest()
    if written is not None and written.get(ns) == digest:
        return [ObjectRef.of(body) for body in [bodies[0], *bindings, *bodies[1:]]]
    namespace_body, fence = bodies[0], bodies[1:]
    objects.apply(namespace_body, field_manager=FIELD_MANAGER, force=True)
    applied = [ObjectRef.of(namespace_body)]
    for body in bindings:
        objects.apply(body, field_manager=FIELD_MANAGER, force=True)
        applied.append(ObjectRef.of(body))
    for body in fence:
        _apply_once_authorized(objects, body)
        applied.append(ObjectRef.of(body))
    for api_version, kind, name in absent:
        group, _, version = api_version.rpartition("/")
        objects.delete(ObjectRef(group, version, kind, ns, name))
    if written is not None:
        written[ns] = digest
    return applied


def _apply_once_authorized(objects: Objects, body: dict[str, Any], *, attempts: int = 20) -> None:
    """Apply, waiting briefly for RoleBindings made a moment ago to reach the API server's authorizer."""
    for attempt in range(attempts):
        try:
            objects.apply(body, field_manager=FIELD_MANAGER, force=True)
        except APIError as error:
            if error.status != 403 or attempt == attempts - 1:  # noqa: PLR2004 - Forbidden
                raise
            time.sleep(0.25)
        else:
            return
