"""``tenancy.ensure_namespace``: apply a tenant namespace's fence, idempotently, as the operator."""

from __future__ import annotations

from gitward.api.resources import TenantSpec
from gitward.kube.objects import ObjectRef, Objects
from gitward.policy.kinds import KNOWN, KindInfo, allowed_set
from gitward.tenancy import baseline

FIELD_MANAGER = "gitward-tenancy"


def ensure_namespace(objects: Objects, ns: str, *, tenant_name: str, tenant: TenantSpec) -> list[ObjectRef]:
    """Create or update the fence of ``ns``, remove parts the tenant no longer wants, return what exists."""
    discovered: dict[str, KindInfo] = {}
    for key in allowed_set(tenant.allowed_kinds):
        if key not in KNOWN:
            group, _, kind = key.rpartition("/")
            resource = objects.preferred_resource(group, kind)
            if resource is not None:
                discovered[key] = KindInfo(group, kind, resource.plural, resource.namespaced)
    kinds = baseline.allowed_kind_infos(tenant, discovered)
    applied = []
    for body in baseline.objects_for(ns, tenant_name=tenant_name, tenant=tenant, kinds=kinds):
        objects.apply(body, field_manager=FIELD_MANAGER, force=True)
        applied.append(ObjectRef.of(body))
    for api_version, kind, name in baseline.absent_for(tenant):
        group, _, version = api_version.rpartition("/")
        objects.delete(ObjectRef(group, version, kind, ns, name))
    return applied
