"""``fence.ensure_namespace``: apply a tenant namespace's fence, idempotently, as the operator."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, MutableMapping
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
    role = next((b for b in fence if b.get("kind") == "Role"), None)
    if role is not None:
        _wait_until_in_effect(objects, ns, role)
    if written is not None:
        written[ns] = digest
    return applied


def _wait_until_in_effect(objects: Objects, ns: str, role: Mapping[str, Any], *, attempts: int = 40) -> None:
    """Wait until the API server's authorizer grants what the tenant's new Role grants.

    A Role and RoleBinding take effect when the authorizer's cache sees them, a moment after
    they are written. An app that started its dry-run in that moment was refused
    (``ApplyForbidden``, permanent for its commit): measured at 1000 apps starting together, one
    app in a thousand. One SubjectAccessReview for the Role's first rule, repeated until it is
    allowed (at most about 10 s, then the dry-run speaks for itself).
    """
    rules = role.get("rules") or []
    if not rules or not rules[0].get("resources") or not rules[0].get("verbs"):
        return
    rule = rules[0]
    account = ServiceAccountRef(ns, baseline.TENANT_SERVICE_ACCOUNT)
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": account.username,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "resourceAttributes": {
                "namespace": ns,
                "verb": str(rule["verbs"][0]),
                "group": str((rule.get("apiGroups") or [""])[0]),
                "resource": str(rule["resources"][0]),
            },
        },
    }
    for _ in range(attempts):
        try:
            answer = objects.create(review) or {}
        except APIError:
            return  # no right to ask (a narrower install): the dry-run will tell
        if (answer.get("status") or {}).get("allowed"):
            return
        time.sleep(0.25)


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
