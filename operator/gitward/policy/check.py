"""``policy.check``: may this tenant deploy these objects, into this namespace?

Pure over the rendered manifests and the tenant's spec. Every object gets
its namespace filled in (or refused); every violation of every object is
collected, and the error lists them all, with the reason of the first. The
names gitward uses for the tenant's fence are reserved: manifests cannot
change or delete them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitward.api.conditions import Reason
from gitward.api.resources import TenantSpec
from gitward.errors import Stalled
from gitward.policy import comply, fields, hooks, podsecurity
from gitward.policy.kinds import (
    KNOWN,
    NEVER_ALLOWED,
    NEVER_ALLOWED_GROUPS,
    POD_SPEC_PATHS,
    allowed_set,
    kind_key,
)
from gitward.render.manifests import Manifest

RESERVED_PREFIX = "gitward-"
FORBIDDEN_VERBS = frozenset({"escalate", "bind", "impersonate", "*"})
MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason one object may not be deployed."""

    reason: Reason
    manifest: Manifest
    detail: str

    def __str__(self) -> str:
        return f"{self.manifest.describe}: {self.detail}"


def _dig(obj: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any] | None:
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current if isinstance(current, Mapping) else None


def _rbac(manifest: Manifest, key: str, tenant: TenantSpec) -> list[tuple[Reason, str]]:
    found: list[tuple[Reason, str]] = []
    obj = manifest.obj
    if key == "rbac.authorization.k8s.io/Role":
        for rule in obj.get("rules") or ():
            if not isinstance(rule, Mapping):
                continue
            verbs = set(rule.get("verbs") or ())
            if bad := sorted(verbs & FORBIDDEN_VERBS):
                found.append((Reason.POLICY_VIOLATION, f"grants {', '.join(bad)}"))
            if "*" in (rule.get("resources") or ()) or "*" in (rule.get("apiGroups") or ()):
                found.append((Reason.POLICY_VIOLATION, "grants '*' resources or API groups"))
    if key == "rbac.authorization.k8s.io/RoleBinding":
        found.extend(fields.role_binding(obj, tenant.fields, tenant.namespaces))
    return found


_ROUTES = frozenset(
    f"gateway.networking.k8s.io/{kind}"
    for kind in ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute")
)


def _fields(manifest: Manifest, key: str, tenant: TenantSpec) -> list[str]:
    """What the object's fields would reach outside the tenant (see ``policy.fields``)."""
    obj, policy = manifest.obj, tenant.fields
    if key == "Service":
        return list(fields.service(obj, policy))
    if key in ("networking.k8s.io/Ingress", "extensions/Ingress"):
        return list(fields.ingress(obj, policy))
    if key in _ROUTES:
        return list(fields.route(obj, policy))
    if key == "PersistentVolumeClaim":
        return list(fields.claim(obj, policy))
    return []


def _object_violations(
    manifest: Manifest, tenant: TenantSpec, namespace: str, allowed: frozenset[str]
) -> list[Violation]:
    key = kind_key(manifest.api_version, manifest.kind)
    info = KNOWN.get(key)
    found: list[tuple[Reason, str]] = []
    if info is not None and not info.namespaced:
        found.append(
            (
                Reason.FORBIDDEN_KIND,
                f"{manifest.kind} is cluster-scoped; tenants deploy namespaced objects only",
            )
        )
    elif key in NEVER_ALLOWED or manifest.group in NEVER_ALLOWED_GROUPS:
        found.append((Reason.FORBIDDEN_KIND, f"{key} is never deployable by a tenant"))
    elif key not in allowed:
        found.append((Reason.FORBIDDEN_KIND, f"{key} is not in the tenant's allowed kinds"))
    if manifest.namespace is not None and manifest.namespace != namespace:
        found.append(
            (
                Reason.NAMESPACE_VIOLATION,
                f"namespace {manifest.namespace!r} is not the target namespace {namespace!r}",
            )
        )
    if (problem := hooks.hook_problem(manifest)) is not None:
        found.append((Reason.POLICY_VIOLATION, problem))
    if manifest.name.startswith(RESERVED_PREFIX):
        found.append(
            (
                Reason.POLICY_VIOLATION,
                f"names starting with {RESERVED_PREFIX!r} are reserved for the tenant's fence",
            )
        )
    found.extend(_rbac(manifest, key, tenant))
    found.extend((Reason.POLICY_VIOLATION, problem) for problem in _fields(manifest, key, tenant))
    if key == "Secret":
        if manifest.obj.get("type") == "kubernetes.io/service-account-token":
            found.append(
                (Reason.POLICY_VIOLATION, "service-account-token Secrets are never deployed from Git")
            )
        elif not tenant.allow_plaintext_secrets and not manifest.decrypted:
            found.append(
                (Reason.PLAINTEXT_SECRET, "plaintext Secrets in Git are not allowed for this tenant")
            )
    if key in POD_SPEC_PATHS:
        spec = _dig(manifest.obj, POD_SPEC_PATHS[key])
        if spec is not None:
            found.extend((Reason.POLICY_VIOLATION, problem) for problem in fields.pod(spec, tenant.fields))
            level = tenant.pod_security
            found.extend(
                (Reason.POLICY_VIOLATION, f"pod security {level}: {problem}")
                for problem in podsecurity.violations(spec, level)
            )
    return [Violation(reason, manifest, detail) for reason, detail in found]


def check(manifests: Sequence[Manifest], *, tenant: TenantSpec, namespace: str) -> list[Manifest]:
    """Return the manifests with their namespace set, or raise ``Stalled`` listing every violation."""
    allowed = allowed_set(tenant.allowed_kinds)
    violations: list[Violation] = []
    seen: dict[tuple[str, str], Manifest] = {}
    for manifest in manifests:
        violations.extend(_object_violations(manifest, tenant, namespace, allowed))
        identity = (kind_key(manifest.api_version, manifest.kind), manifest.name)
        if identity in seen:
            violations.append(
                Violation(
                    Reason.YAML_REJECTED,
                    manifest,
                    f"the same object is also defined in {seen[identity].origin}",
                )
            )
        seen[identity] = manifest
    if violations:
        shown = "; ".join(str(v) for v in violations[:MAX_LISTED])
        more = f"; and {len(violations) - MAX_LISTED} more" if len(violations) > MAX_LISTED else ""
        fixes = tuple(r.to_yaml() for r in comply.remedies(manifests, tenant.pod_security))
        hint = (
            f"; {len(fixes)} pod security patch(es) would fix them (gitward diff prints them)"
            if fixes
            else ""
        )
        raise PolicyViolations(
            violations, f"{len(violations)} violation(s): {shown}{more}{hint}", remedies=fixes
        )
    placed = []
    for manifest in manifests:
        obj = copy.deepcopy(dict(manifest.obj))
        metadata = dict(obj.get("metadata") or {})
        metadata["namespace"] = namespace
        obj["metadata"] = metadata
        placed.append(Manifest(obj=obj, file=manifest.file, document=manifest.document))
    return placed


class PolicyViolations(Stalled):
    """Every violation of a commit; the condition reason is that of the first."""

    def __init__(
        self, violations: Sequence[Violation], message: str, *, remedies: Sequence[str] = ()
    ) -> None:
        super().__init__(violations[0].reason, message)
        self.violations = tuple(violations)
        self.remedies = tuple(remedies)  # YAML patches that would make refused workloads comply
