"""Condition types and reasons, declared once.

Users, docs, alerts and tests match on these strings, so they are the API
contract: one reason per distinct cause. ``Ready`` is never set directly by a
step; it is summarized from the step conditions by :func:`summarize_ready`,
the way Flux summarizes its step conditions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class ConditionType(enum.StrEnum):
    """The conditions a ``GitOpsApp`` reports, in pipeline order (``Ready`` first)."""

    READY = "Ready"
    SOURCE_VERIFIED = "SourceVerified"
    VALIDATED = "Validated"
    APPLIED = "Applied"
    HEALTHY = "Healthy"
    DRIFTED = "Drifted"  # not a step: whether the cluster still matches the applied revision


STEP_CONDITIONS: tuple[ConditionType, ...] = (
    ConditionType.SOURCE_VERIFIED,
    ConditionType.VALIDATED,
    ConditionType.APPLIED,
    ConditionType.HEALTHY,
)


class Reason(enum.StrEnum):
    """Why a condition has its status: one member per distinct cause."""

    SUCCEEDED = "Succeeded"
    PROGRESSING = "Progressing"
    # Tenant and source policy
    TENANT_NOT_FOUND = "TenantNotFound"
    SOURCE_NOT_ALLOWED = "SourceNotAllowed"
    BRANCH_NOT_ALLOWED = "BranchNotAllowed"
    INVALID_URL = "InvalidURL"
    FETCH_FAILED = "FetchFailed"  # transient: the server refused (credentials, host key, missing branch)
    SOURCE_UNAVAILABLE = "SourceUnavailable"  # the git server did not answer, or timed out: retried
    SOURCE_TOO_LARGE = "SourceTooLarge"  # a fetch, object or tree over the tenant's budget
    SOURCE_REJECTED = "SourceRejected"  # git's integrity checks refused what the server sent
    # Trust
    UNSIGNED_COMMIT = "UnsignedCommit"
    UNTRUSTED_SIGNER = "UntrustedSigner"
    INVALID_SIGNATURE = "InvalidSignature"
    EXPIRED_KEY = "ExpiredKey"
    REVOKED_KEY = "RevokedKey"
    NON_FAST_FORWARD = "NonFastForward"
    # Render
    PATH_ESCAPE = "PathEscape"
    SYMLINK_OUT_OF_BOUNDS = "SymlinkOutOfBounds"
    MANIFEST_TOO_LARGE = "ManifestTooLarge"
    YAML_REJECTED = "YAMLRejected"
    DUPLICATE_KEY = "DuplicateKey"
    REMOTE_REF_FORBIDDEN = "RemoteRefForbidden"
    RENDER_TOO_LARGE = "RenderTooLarge"  # documents, rendered bytes, kustomize time, memory or depth
    KUSTOMIZE_BUILD_FAILED = "KustomizeBuildFailed"  # kustomize itself refused the kustomization
    PLUGIN_FORBIDDEN = "PluginForbidden"  # exec, container, starlark or KRM-function plugins; Helm charts
    # Policy
    NAMESPACE_VIOLATION = "NamespaceViolation"
    FORBIDDEN_KIND = "ForbiddenKind"
    POLICY_VIOLATION = "PolicyViolation"
    PLAINTEXT_SECRET = "PlaintextSecret"  # noqa: S105 - a reason name, not a secret
    # Supply chain: images and encrypted secrets
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"  # a registry or repository the tenant's image policy does not list
    IMAGE_NOT_PINNED = "ImageNotPinned"  # a tag where the policy requires a digest
    IMAGE_UNSIGNED = "ImageUnsigned"  # no signature by a key the tenant trusts
    IMAGE_UNAVAILABLE = "ImageUnavailable"  # the registry did not answer, or has no such image: retried
    DECRYPTION_FAILED = "DecryptionFailed"  # a SOPS document the tenant's key cannot (or may not) decrypt
    # Apply and health
    DRY_RUN_FAILED = "DryRunFailed"
    APPLY_FORBIDDEN = "ApplyForbidden"
    OWNERSHIP_CONFLICT = "OwnershipConflict"
    FIELD_CONFLICT = "FieldConflict"  # a field another field manager owns; spec.force takes it over
    EMPTY_SOURCE = "EmptySource"
    HEALTH_TIMEOUT = "HealthTimeout"
    TEST_FAILED = "TestFailed"  # a test Job the revision declares failed (or did not finish in time)
    ROLLED_BACK = "RolledBack"
    ROLLBACK_NOT_ALLOWED = "RollbackNotAllowed"  # rollbackTo names a commit with no successful record
    SUSPENDED = "Suspended"
    INTERRUPTED = "Interrupted"  # the operator stopped during an apply; a later attempt finished the job
    # Drift: the live objects no longer match the revision gitward applied
    DRIFTED = "Drifted"
    DRIFT_CORRECTED = "DriftCorrected"
    IN_SYNC = "InSync"
    # The operator's own surroundings
    API_UNAVAILABLE = "APIUnavailable"  # the Kubernetes API did not answer, or answered 429/5xx: retried
    # Anything the pipeline did not foresee: reported, never allowed to kill the app's daemon
    RECONCILE_ERROR = "ReconcileError"


class Status(enum.StrEnum):
    """The three values a Kubernetes condition status can take."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition as it appears in ``status.conditions`` (metav1.Condition)."""

    type: ConditionType
    status: Status
    reason: Reason
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Render as the API server stores it, omitting unset optional fields."""
        body: dict[str, object] = {
            "type": str(self.type),
            "status": str(self.status),
            "reason": str(self.reason),
            "message": self.message,
        }
        if self.observed_generation is not None:
            body["observedGeneration"] = self.observed_generation
        if self.last_transition_time is not None:
            body["lastTransitionTime"] = self.last_transition_time
        return body


def summarize_ready(steps: Iterable[Condition], *, observed_generation: int | None = None) -> Condition:
    """Derive ``Ready`` from the step conditions.

    The first step that is not ``True`` decides (its status, reason and
    message are carried over), so ``kubectl get`` shows the cause that stops
    the app, not a generic failure. All steps ``True`` means ``Ready=True``;
    a missing step means work is still in progress.
    """
    by_type: Mapping[ConditionType, Condition] = {c.type: c for c in steps}
    for step in STEP_CONDITIONS:
        condition = by_type.get(step)
        if condition is None:
            return Condition(
                ConditionType.READY,
                Status.UNKNOWN,
                Reason.PROGRESSING,
                f"{step} has not been evaluated yet",
                observed_generation,
            )
        if condition.status is not Status.TRUE:
            return Condition(
                ConditionType.READY,
                condition.status,
                condition.reason,
                condition.message,
                observed_generation,
            )
    return Condition(
        ConditionType.READY,
        Status.TRUE,
        Reason.SUCCEEDED,
        "every step succeeded",
        observed_generation,
    )


def merge_conditions(
    existing: Iterable[Mapping[str, object]],
    updates: Iterable[Condition],
    *,
    now: str,
) -> list[dict[str, object]]:
    """Merge new conditions into existing ones, keeping ``lastTransitionTime`` honest.

    The transition time moves only when a condition's status changes, as
    kstatus and ``kubectl wait`` expect. Conditions of unknown types that
    someone else wrote are kept as they are.
    """
    merged: dict[str, dict[str, object]] = {}
    for raw in existing:
        merged[str(raw.get("type", ""))] = dict(raw)
    for condition in updates:
        body = condition.to_dict()
        previous = merged.get(str(condition.type))
        if previous is not None and previous.get("status") == body["status"]:
            body["lastTransitionTime"] = previous.get("lastTransitionTime", now)
        else:
            body["lastTransitionTime"] = now
        merged[str(condition.type)] = body
    order = {str(t): i for i, t in enumerate(ConditionType)}
    return sorted(
        merged.values(), key=lambda c: (order.get(str(c.get("type")), len(order)), str(c.get("type")))
    )
