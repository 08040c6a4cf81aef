"""Typed models of the three gitward resources, parsed from their raw bodies.

The CRDs in ``crds/`` are the schema the API server enforces; these models
are what the rest of gitward reads, with the same defaults, so no layer ever
digs through an untyped dict. Parsing is pure and total: a body that the CRD
would have refused raises :class:`InvalidResourceError` instead of producing
a half-filled model.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NewType, TypeVar

GROUP: Final = "gitward.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

_E = TypeVar("_E", bound=enum.StrEnum)

TenantName = NewType("TenantName", str)
Namespace = NewType("Namespace", str)


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource kind with the names the API server serves it under."""

    kind: str
    plural: str
    namespaced: bool


TENANT: Final = Kind("GitOpsTenant", "gitopstenants", namespaced=False)
APP: Final = Kind("GitOpsApp", "gitopsapps", namespaced=True)
REVISION: Final = Kind("GitOpsRevision", "gitopsrevisions", namespaced=True)
KINDS: Final = (TENANT, APP, REVISION)


class InvalidResourceError(ValueError):
    """A resource body that does not match the contract (the CRD would refuse it); ``field`` names where."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class VerifyMode(enum.StrEnum):
    """Which commits must carry a trusted signature."""

    HEAD = "head"
    ALL = "all"


class PodSecurityLevel(enum.StrEnum):
    """Pod Security Admission levels, weakest first."""

    PRIVILEGED = "privileged"
    BASELINE = "baseline"
    RESTRICTED = "restricted"


class NetworkIsolation(enum.StrEnum):
    """How a tenant's namespaces are fenced on the network."""

    DEFAULT_DENY = "default-deny"
    NONE = "none"


class Trigger(enum.StrEnum):
    """What started a change attempt, as recorded in a ``GitOpsRevision``."""

    POLL = "poll"
    WEBHOOK = "webhook"
    ROLLBACK = "rollback"
    AUTO_ROLLBACK = "auto-rollback"
    DRIFT = "drift"


class DriftPolicy(enum.StrEnum):
    """What gitward does when live objects no longer match the revision it applied."""

    CORRECT = "correct"  # re-apply the last verified revision, record it
    REPORT = "report"  # record it and set the Drifted condition; change nothing


class TagPolicy(enum.StrEnum):
    """What an image reference without a digest means under a tenant's image policy."""

    FORBID = "forbid"  # ImageNotPinned: only ``image@sha256:...`` is deployed
    RESOLVE = "resolve"  # the tag is resolved to its digest at apply; the digest is applied and recorded


class ChangeAction(enum.StrEnum):
    """What an apply did to one object."""

    CREATED = "created"
    UPDATED = "updated"
    PRUNED = "pruned"
    UNCHANGED = "unchanged"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``90s``, ``1m30s``, ``1h``) into seconds.

    Only the non-negative forms the CRD's pattern admits are accepted.
    """
    if not _DURATION_WHOLE.match(text):
        raise InvalidResourceError(f"not a duration: {text!r} (expected e.g. 30s, 5m, 1h30m)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))


@dataclass(frozen=True, slots=True)
class SourceRule:
    """One allowed repository pattern and the branch patterns allowed from it."""

    url: str
    branches: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A ConfigMap in the operator's namespace holding trusted public keys."""

    config_map: str


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """``spec.images``: where a tenant's images may come from, how pinned, and who must have signed them.

    Signatures are cosign's, checked against public keys (PEM) in ConfigMaps of the operator's
    namespace; ``verify`` is an object so a keyless identity (issuer, subject) can join the keys.
    """

    repositories: tuple[str, ...]  # globs over ``registry/repository`` (``ghcr.io/acme/*``)
    tags: TagPolicy = TagPolicy.FORBID
    keys_from: tuple[KeyRef, ...] = ()  # cosign public keys; none: signatures are not required
    credentials_secret: str | None = None  # a kubernetes.io/dockerconfigjson Secret, operator's namespace
    ca_from: KeyRef | None = None  # a ConfigMap whose ``ca.crt`` the registries' certificates chain to


@dataclass(frozen=True, slots=True)
class DecryptionSpec:
    """``spec.decryption``: SOPS documents are decrypted with the age identities in one Secret.

    The Secret lives in the operator's namespace, where only the admin writes: a tenant can
    neither read it nor swap it, and no app can name another tenant's key.
    """

    secret: str
    provider: str = "sops"


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """Fields of allowed kinds that reach outside the tenant, and the admin's opt-ins (``spec.policy``)."""

    cluster_roles: tuple[str, ...] = ("view", "edit")  # ClusterRoles a RoleBinding may reference
    rbac_users: tuple[str, ...] = ()  # Users a RoleBinding may name
    rbac_groups: tuple[str, ...] = ()  # Groups a RoleBinding may name
    service_types: tuple[str, ...] = ("ClusterIP",)
    allow_external_ips: bool = False
    load_balancer_source_ranges: tuple[str, ...] = ()
    ingress_hosts: tuple[str, ...] = ()  # host globs; "*" allows rules without a host
    priority_classes: tuple[str, ...] = ()
    storage_classes: tuple[str, ...] = ()
    allow_node_name: bool = False
    allow_host_ports: bool = False
    allow_tolerate_all: bool = False
    allow_volume_name: bool = False


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """What a tenant may deploy, from where, signed by whom, and into which namespaces."""

    namespaces: tuple[Namespace, ...]
    sources: tuple[SourceRule, ...]
    keys_from: tuple[KeyRef, ...]
    verify: VerifyMode = VerifyMode.ALL
    require_fast_forward: bool = True
    allowed_kinds: tuple[str, ...] = ()
    allow_plaintext_secrets: bool = False
    pod_security: PodSecurityLevel = PodSecurityLevel.RESTRICTED
    network_policy: NetworkIsolation = NetworkIsolation.DEFAULT_DENY
    resource_quota: Mapping[str, Any] = field(default_factory=dict)
    limit_range: Mapping[str, Any] = field(default_factory=dict)
    limits: Mapping[str, Any] = field(default_factory=dict)  # budgets: see gitward.api.budgets
    fields: FieldPolicy = FieldPolicy()
    images: ImagePolicy | None = None  # None: no image gate
    decryption: DecryptionSpec | None = None  # None: an encrypted document is DecryptionFailed


@dataclass(frozen=True, slots=True)
class AppSource:
    """Where an app's manifests come from."""

    url: str
    branch: str = "main"
    path: str = "."
    interval_seconds: float = 60.0
    secret_ref: str | None = None


@dataclass(frozen=True, slots=True)
class PruneGuardSpec:
    """``spec.pruneGuard``: how much one commit may delete."""

    allow_empty: bool = False
    max_share_percent: int = 50


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What a team asks gitward to keep deployed."""

    tenant: TenantName
    source: AppSource
    target_namespace: Namespace | None = None
    prune: bool = True
    prune_guard: PruneGuardSpec = PruneGuardSpec()
    suspend: bool = False
    history_limit: int = 50
    health_timeout_seconds: float = 300.0
    auto_rollback: bool = True
    rollback_to: str = ""
    drift_policy: DriftPolicy = DriftPolicy.CORRECT
    force: bool = False  # take over fields another field manager owns (else FieldConflict)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidResourceError(f"{where} must be an object")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(v, str) for v in value)
    ):
        raise InvalidResourceError(f"{where} must be a list of strings")
    return tuple(value)


def _required_str(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidResourceError(f"{where}.{key} is required", field=f"{where}.{key}")
    return value


def _enum(kind: type[_E], value: object, default: _E, where: str) -> _E:
    if value is None:
        return default
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidResourceError(f"{where} must be one of {allowed}, not {value!r}") from None


def parse_tenant_spec(spec: Mapping[str, Any]) -> TenantSpec:
    """Parse ``GitOpsTenant.spec`` with the CRD's defaults."""
    sources = []
    for index, raw in enumerate(spec.get("sources") or ()):
        rule = _mapping(raw, f"spec.sources[{index}]")
        sources.append(
            SourceRule(
                url=_required_str(rule, "url", f"spec.sources[{index}]"),
                branches=_strings(rule.get("branches"), f"spec.sources[{index}].branches") or ("main",),
            )
        )
    trust = _mapping(spec.get("trust"), "spec.trust")
    keys = _config_map_refs(trust.get("keysFrom"), "spec.trust.keysFrom")
    policy = _mapping(spec.get("policy"), "spec.policy")
    isolation = _mapping(spec.get("isolation"), "spec.isolation")
    return TenantSpec(
        namespaces=tuple(Namespace(n) for n in _strings(spec.get("namespaces"), "spec.namespaces")),
        sources=tuple(sources),
        keys_from=keys,
        verify=_enum(VerifyMode, trust.get("verify"), VerifyMode.ALL, "spec.trust.verify"),
        require_fast_forward=bool(trust.get("requireFastForward", True)),
        allowed_kinds=_strings(policy.get("allowedKinds"), "spec.policy.allowedKinds"),
        allow_plaintext_secrets=bool(policy.get("allowPlaintextSecrets", False)),
        pod_security=_enum(
            PodSecurityLevel,
            policy.get("podSecurity"),
            PodSecurityLevel.RESTRICTED,
            "spec.policy.podSecurity",
        ),
        network_policy=_enum(
            NetworkIsolation,
            isolation.get("networkPolicy"),
            NetworkIsolation.DEFAULT_DENY,
            "spec.isolation.networkPolicy",
        ),
        resource_quota=_mapping(isolation.get("resourceQuota"), "spec.isolation.resourceQuota"),
        limit_range=_mapping(isolation.get("limitRange"), "spec.isolation.limitRange"),
        limits=_mapping(spec.get("limits"), "spec.limits"),
        fields=_field_policy(policy),
        images=_image_policy(spec.get("images")),
        decryption=_decryption(spec.get("decryption")),
    )


def _config_map_refs(value: object, where: str) -> tuple[KeyRef, ...]:
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise InvalidResourceError(f"{where} must be a list")
    refs = []
    for index, raw in enumerate(value):
        ref = _mapping(_mapping(raw, f"{where}[{index}]").get("configMapRef"), "configMapRef")
        refs.append(KeyRef(_required_str(ref, "name", f"{where}[{index}].configMapRef")))
    return tuple(refs)


def _image_policy(value: object) -> ImagePolicy | None:
    if value is None:
        return None
    images = _mapping(value, "spec.images")
    verify = _mapping(images.get("verify"), "spec.images.verify")
    credentials = _mapping(images.get("credentialsRef"), "spec.images.credentialsRef")
    ca_from = _mapping(
        _mapping(images.get("caFrom"), "spec.images.caFrom").get("configMapRef"), "configMapRef"
    )
    return ImagePolicy(
        repositories=_strings(images.get("repositories"), "spec.images.repositories"),
        tags=_enum(TagPolicy, images.get("tags"), TagPolicy.FORBID, "spec.images.tags"),
        keys_from=_config_map_refs(verify.get("keysFrom"), "spec.images.verify.keysFrom"),
        credentials_secret=str(credentials["name"]) if credentials.get("name") else None,
        ca_from=KeyRef(str(ca_from["name"])) if ca_from.get("name") else None,
    )


def _decryption(value: object) -> DecryptionSpec | None:
    if value is None:
        return None
    decryption = _mapping(value, "spec.decryption")
    provider = str(decryption.get("provider") or "sops")
    if provider != "sops":
        raise InvalidResourceError(f"spec.decryption.provider must be sops, not {provider!r}")
    ref = _mapping(decryption.get("secretRef"), "spec.decryption.secretRef")
    return DecryptionSpec(secret=_required_str(ref, "name", "spec.decryption.secretRef"), provider=provider)


def _field_policy(policy: Mapping[str, Any]) -> FieldPolicy:
    rbac = _mapping(policy.get("rbac"), "spec.policy.rbac")
    services = _mapping(policy.get("services"), "spec.policy.services")
    defaults = FieldPolicy()
    cluster_roles = rbac.get("clusterRoles")
    service_types = services.get("types")
    return FieldPolicy(
        cluster_roles=_strings(cluster_roles, "spec.policy.rbac.clusterRoles")
        if cluster_roles is not None
        else defaults.cluster_roles,
        rbac_users=_strings(rbac.get("users"), "spec.policy.rbac.users"),
        rbac_groups=_strings(rbac.get("groups"), "spec.policy.rbac.groups"),
        service_types=_strings(service_types, "spec.policy.services.types")
        if service_types is not None
        else defaults.service_types,
        allow_external_ips=bool(services.get("allowExternalIPs", False)),
        load_balancer_source_ranges=_strings(
            services.get("loadBalancerSourceRanges"), "spec.policy.services.loadBalancerSourceRanges"
        ),
        ingress_hosts=_strings(policy.get("ingressHosts"), "spec.policy.ingressHosts"),
        priority_classes=_strings(policy.get("priorityClasses"), "spec.policy.priorityClasses"),
        storage_classes=_strings(policy.get("storageClasses"), "spec.policy.storageClasses"),
        allow_node_name=bool(policy.get("allowNodeName", False)),
        allow_host_ports=bool(policy.get("allowHostPorts", False)),
        allow_tolerate_all=bool(policy.get("allowTolerateAll", False)),
        allow_volume_name=bool(policy.get("allowVolumeName", False)),
    )


def parse_app_spec(spec: Mapping[str, Any]) -> AppSpec:
    """Parse ``GitOpsApp.spec`` with the CRD's defaults."""
    source = _mapping(spec.get("source"), "spec.source")
    secret_ref = _mapping(source.get("secretRef"), "spec.source.secretRef")
    history_limit = spec.get("historyLimit", 50)
    if not isinstance(history_limit, int) or isinstance(history_limit, bool) or history_limit < 1:
        raise InvalidResourceError("spec.historyLimit must be a positive integer")
    target = spec.get("targetNamespace")
    guard = _mapping(spec.get("pruneGuard"), "spec.pruneGuard")
    share = guard.get("maxSharePercent", 50)
    if not isinstance(share, int) or isinstance(share, bool) or not 0 <= share <= 100:  # noqa: PLR2004 - percent
        raise InvalidResourceError("spec.pruneGuard.maxSharePercent must be an integer from 0 to 100")
    return AppSpec(
        tenant=TenantName(_required_str(spec, "tenant", "spec")),
        source=AppSource(
            url=_required_str(source, "url", "spec.source"),
            branch=str(source.get("branch") or "main"),
            path=str(source.get("path") or "."),
            interval_seconds=parse_duration(str(source.get("interval") or "1m")),
            secret_ref=str(secret_ref["name"]) if secret_ref.get("name") else None,
        ),
        target_namespace=Namespace(str(target)) if target else None,
        prune=bool(spec.get("prune", True)),
        prune_guard=PruneGuardSpec(allow_empty=bool(guard.get("allowEmpty", False)), max_share_percent=share),
        suspend=bool(spec.get("suspend", False)),
        history_limit=history_limit,
        health_timeout_seconds=parse_duration(str(spec.get("healthTimeout") or "5m")),
        auto_rollback=bool(spec.get("autoRollback", True)),
        rollback_to=str(spec.get("rollbackTo") or ""),
        drift_policy=_enum(DriftPolicy, spec.get("driftPolicy"), DriftPolicy.CORRECT, "spec.driftPolicy"),
        force=bool(spec.get("force", False)),
    )
