"""What a reconcile decides to do, from status, head and spec (pure)."""

from __future__ import annotations

import pytest

from gitward.controller import Action, decide

A, B, C = "a" * 40, "b" * 40, "c" * 40


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
    ],
)  # fmt: skip
def test_decide(state, head, generation, rollback_to, force, expected):
    """Each combination of status, head, generation and rollback request has one action."""
    assert decide(state, generation=generation, head=head, rollback_to=rollback_to, force=force) is expected
