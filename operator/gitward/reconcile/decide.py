"""Pure decisions of a reconcile: skip, run, hold or roll back; which condition a reason sets; backoff.

No I/O and no clock: every function here is computed from its arguments
and tested on fixtures (``tests/unit/test_decide.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gitward.api.conditions import STEP_CONDITIONS, Condition, ConditionType, Reason, Status
from gitward.reconcile.status import Action, AppStatus

MAX_BACKOFF_STEPS = 6
# What a transient failure (retried, never recorded) leaves as the Ready reason. The status they
# wrote says nothing about the commit: a poll that finds the head unchanged must look again.
TRANSIENT_REASONS = frozenset(
    {
        Reason.FETCH_FAILED,
        Reason.SOURCE_UNAVAILABLE,
        Reason.API_UNAVAILABLE,
        Reason.IMAGE_UNAVAILABLE,
        Reason.RECONCILE_ERROR,
    }
)


def decide(status: AppStatus, *, generation: int, head: str, rollback_to: str, force: bool) -> Action:
    """The action for this reconcile, from the app's status, the branch head and the spec."""
    held = status.hold
    if rollback_to:
        if held is None or held.commit != rollback_to:
            return Action.ROLLBACK
        if held.released:
            pass  # the hold ended when the branch moved on; follow the branch again
        elif head in (held.held_at_head, rollback_to):
            return Action.HOLD
        else:
            return Action.DEPLOY
    unchanged = head == status.last_attempted and generation == status.observed_generation
    if unchanged and not force and status.ready_reason not in TRANSIENT_REASONS:
        return Action.SKIP
    return Action.DEPLOY


_STEP_OF: Mapping[Reason, ConditionType] = {
    **dict.fromkeys(
        (
            Reason.TENANT_NOT_FOUND,
            Reason.SOURCE_NOT_ALLOWED,
            Reason.BRANCH_NOT_ALLOWED,
            Reason.INVALID_URL,
            Reason.FETCH_FAILED,
            Reason.SOURCE_UNAVAILABLE,
            Reason.SOURCE_TOO_LARGE,
            Reason.SOURCE_REJECTED,
            Reason.UNSIGNED_COMMIT,
            Reason.UNTRUSTED_SIGNER,
            Reason.INVALID_SIGNATURE,
            Reason.EXPIRED_KEY,
            Reason.REVOKED_KEY,
            Reason.NON_FAST_FORWARD,
            Reason.ROLLBACK_NOT_ALLOWED,
        ),
        ConditionType.SOURCE_VERIFIED,
    ),
    **dict.fromkeys(
        (
            Reason.NAMESPACE_VIOLATION,
            Reason.PATH_ESCAPE,
            Reason.SYMLINK_OUT_OF_BOUNDS,
            Reason.MANIFEST_TOO_LARGE,
            Reason.RENDER_TOO_LARGE,
            Reason.KUSTOMIZE_BUILD_FAILED,
            Reason.PLUGIN_FORBIDDEN,
            Reason.YAML_REJECTED,
            Reason.DUPLICATE_KEY,
            Reason.REMOTE_REF_FORBIDDEN,
            Reason.FORBIDDEN_KIND,
            Reason.POLICY_VIOLATION,
            Reason.PLAINTEXT_SECRET,
            Reason.DECRYPTION_FAILED,
            Reason.IMAGE_NOT_ALLOWED,
            Reason.IMAGE_NOT_PINNED,
            Reason.IMAGE_UNSIGNED,
            Reason.IMAGE_UNAVAILABLE,
        ),
        ConditionType.VALIDATED,
    ),
    Reason.HEALTH_TIMEOUT: ConditionType.HEALTHY,
    Reason.TEST_FAILED: ConditionType.HEALTHY,
    Reason.ROLLED_BACK: ConditionType.HEALTHY,
}


def step_of(reason: Reason) -> ConditionType:
    """The step condition a reason belongs to (apply-time reasons by default)."""
    return _STEP_OF.get(reason, ConditionType.APPLIED)


def conditions_for_failure(reason: Reason, message: str, generation: int) -> list[Condition]:
    """Steps before the failing one succeeded; the failing one is False with the reason.

    An API server that did not answer says nothing about the app: its step is ``Unknown``, and so
    ``Ready`` (the state of the cluster could not be read, not found wrong).
    """
    failing = step_of(reason)
    before = list(STEP_CONDITIONS)[: list(STEP_CONDITIONS).index(failing)]
    conditions = [Condition(t, Status.TRUE, Reason.SUCCEEDED, "", generation) for t in before]
    status = Status.UNKNOWN if reason is Reason.API_UNAVAILABLE else Status.FALSE
    conditions.append(Condition(failing, status, reason, message, generation))
    return conditions


def conditions_succeeded(message: str, generation: int) -> list[Condition]:
    """Every step True."""
    return [Condition(t, Status.TRUE, Reason.SUCCEEDED, message, generation) for t in STEP_CONDITIONS]


def conditions_from(stored: Sequence[Mapping[str, Any]], updates: Sequence[Condition]) -> list[Condition]:
    """Step conditions as they will stand: the stored ones, overridden by ``updates``."""
    by_type: dict[ConditionType, Condition] = {}
    for raw in stored:
        try:
            kind = ConditionType(str(raw.get("type")))
            by_type[kind] = Condition(
                kind,
                Status(str(raw.get("status"))),
                Reason(str(raw.get("reason"))),
                str(raw.get("message", "")),
            )
        except ValueError:
            continue
    for condition in updates:
        by_type[condition.type] = condition
    return [by_type[t] for t in STEP_CONDITIONS if t in by_type]


def next_delay(*, interval: float, retry_after: float | None, failures: int, jitter: float) -> float:
    """Seconds until the next reconcile: the interval plus jitter, or exponential backoff capped by it.

    ``failures`` counts consecutive attempts that asked to be retried (this
    one included); ``jitter`` is a number in [0, 1) from the caller.
    """
    if retry_after is None:
        return interval * (1 + 0.1 * jitter)
    backoff: float = retry_after * 2 ** min(max(failures, 1) - 1, MAX_BACKOFF_STEPS)
    return min(interval, backoff)
