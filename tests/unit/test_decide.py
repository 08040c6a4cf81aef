"""What a reconcile decides to do, from status, head and spec (pure)."""

from __future__ import annotations

import pytest

from gitward.api.conditions import ConditionType, Reason
from gitward.reconcile.decide import conditions_for_failure, decide, next_delay
from gitward.reconcile.status import Action, AppStatus

A, B, C = "a" * 40, "b" * 40, "c" * 40


def ready(state, reason):
    return {"type": "Ready", "status": state, "reason": reason, "message": ""}


def status(**fields):
    return {"observedGeneration": 2, "lastAttemptedRevision": A, "lastAppliedRevision": A, **fields}


@pytest.mark.parametrize(
    ("state", "head", "generation", "rollback_to", "force", "expected"),
    [
        (status(), A, 2, "", False, Action.SKIP),  # nothing new: no apply, no status write
        (status(), A, 2, "", True, Action.DEPLOY),  # on demand / webhook forces a pass
        (status(), B, 2, "", False, Action.DEPLOY),  # the branch moved
        (status(), A, 3, "", False, Action.DEPLOY),  # the spec changed
        (status(), B, 2, C, False, Action.ROLLBACK),  # a new rollback request
        (status(rollback={"commit": C, "heldAtHead": B}), B, 2, C, True, Action.HOLD),  # held at the rollback
        (status(rollback={"commit": C, "heldAtHead": B}), C, 2, C, False, Action.HOLD),
        (status(rollback={"commit": C, "heldAtHead": B}), A, 2, C, False, Action.DEPLOY),  # branch moved past
        (status(lastAttemptedRevision=A, rollback={"commit": C, "heldAtHead": B, "released": True}), A, 2, C, False,
         Action.SKIP),  # released: follow the branch again
        (status(lastAttemptedRevision=B, rollback={"commit": C, "heldAtHead": B}), B, 3, "", False,
         Action.DEPLOY),  # the field was cleared (a new generation): back to the branch head
        # A transient failure (nothing decided about the commit) is looked at again, head unchanged or not
        (status(conditions=[ready("False", "SourceUnavailable")]), A, 2, "", False, Action.DEPLOY),
        (status(conditions=[ready("Unknown", "APIUnavailable")]), A, 2, "", False, Action.DEPLOY),
        (status(conditions=[ready("False", "FetchFailed")]), A, 2, "", False, Action.DEPLOY),
        (status(conditions=[ready("False", "ReconcileError")]), A, 2, "", False, Action.DEPLOY),
        # A refusal is final for that head: not retried until it moves
        (status(conditions=[ready("False", "UnsignedCommit")]), A, 2, "", False, Action.SKIP),
        (status(conditions=[ready("False", "FieldConflict")]), A, 2, "", False, Action.SKIP),
        (status(conditions=[ready("True", "Succeeded")]), A, 2, "", False, Action.SKIP),
    ],
)  # fmt: skip
def test_decide(state, head, generation, rollback_to, force, expected):
    """Each combination of status, head, generation and rollback request has one action."""
    parsed = AppStatus.parse(state)
    assert decide(parsed, generation=generation, head=head, rollback_to=rollback_to, force=force) is expected


@pytest.mark.parametrize(
    ("retry_after", "failures", "jitter", "expected"),
    [
        (None, 0, 0.0, 60.0),  # healthy: the interval
        (None, 0, 0.99, 60.0 * 1.099),  # plus up to 10% jitter, so apps do not poll in lockstep
        (15.0, 1, 0.5, 15.0),  # first failure: the error's own delay
        (15.0, 2, 0.5, 30.0),  # then doubling
        (15.0, 3, 0.5, 60.0),  # capped by the interval
        (15.0, 50, 0.5, 60.0),
    ],
)
def test_next_delay_backs_off_up_to_the_interval(retry_after, failures, jitter, expected):
    """Transient failures back off exponentially from the error's delay, never past the interval."""
    delay = next_delay(interval=60.0, retry_after=retry_after, failures=failures, jitter=jitter)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("reason", "condition"),
    [
        (Reason.SOURCE_TOO_LARGE, ConditionType.SOURCE_VERIFIED),
        (Reason.SOURCE_REJECTED, ConditionType.SOURCE_VERIFIED),
        (Reason.UNSIGNED_COMMIT, ConditionType.SOURCE_VERIFIED),
        (Reason.RENDER_TOO_LARGE, ConditionType.VALIDATED),
        (Reason.YAML_REJECTED, ConditionType.VALIDATED),
        (Reason.DRY_RUN_FAILED, ConditionType.APPLIED),
        (Reason.API_UNAVAILABLE, ConditionType.APPLIED),
        (Reason.RECONCILE_ERROR, ConditionType.APPLIED),
        (Reason.HEALTH_TIMEOUT, ConditionType.HEALTHY),
    ],
)
def test_each_reason_fails_its_own_step(reason, condition):
    """A failure sets the condition of the step it belongs to False, and every earlier step True."""
    conditions = conditions_for_failure(reason, "why", 3)
    assert conditions[-1].type is condition
    assert conditions[-1].reason is reason
    assert all(c.status.value == "True" for c in conditions[:-1])
