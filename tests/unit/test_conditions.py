"""Conditions: Ready is summarized from the steps, transition times move only on change."""

from __future__ import annotations

from gitward.api.conditions import (
    STEP_CONDITIONS,
    Condition,
    ConditionType,
    Reason,
    Status,
    merge_conditions,
    summarize_ready,
)

# The reasons of the API contract (DESIGN.md). Users and alerts match on these strings.
CONTRACT_REASONS = {
    "Succeeded", "SourceNotAllowed", "BranchNotAllowed", "InvalidURL", "FetchFailed", "UnsignedCommit",
    "UntrustedSigner", "InvalidSignature", "ExpiredKey", "RevokedKey", "NonFastForward", "PathEscape",
    "SymlinkOutOfBounds", "ManifestTooLarge", "YAMLRejected", "DuplicateKey", "RemoteRefForbidden",
    "NamespaceViolation", "ForbiddenKind", "PolicyViolation", "PlaintextSecret", "DryRunFailed",
    "ApplyForbidden", "OwnershipConflict", "EmptySource", "HealthTimeout", "RolledBack", "TenantNotFound",
    "Suspended",
}  # fmt: skip


def ok(kind: ConditionType) -> Condition:
    return Condition(kind, Status.TRUE, Reason.SUCCEEDED, "fine")


def test_every_contract_reason_is_declared():
    """No contract reason is missing or misspelt in the enum."""
    assert CONTRACT_REASONS <= {r.value for r in Reason}


def test_ready_is_true_only_when_every_step_is_true():
    """All four steps True gives Ready=True/Succeeded with the generation observed."""
    ready = summarize_ready([ok(t) for t in STEP_CONDITIONS], observed_generation=7)
    assert (ready.type, ready.status, ready.reason) == (ConditionType.READY, Status.TRUE, Reason.SUCCEEDED)
    assert ready.observed_generation == 7


def test_ready_carries_the_first_failing_step():
    """The earliest failing step decides Ready, with its reason and message."""
    steps = [
        ok(ConditionType.SOURCE_VERIFIED),
        Condition(ConditionType.VALIDATED, Status.FALSE, Reason.PATH_ESCAPE, "deploy/../x escapes"),
        Condition(ConditionType.APPLIED, Status.FALSE, Reason.DRY_RUN_FAILED, "later step"),
        ok(ConditionType.HEALTHY),
    ]
    ready = summarize_ready(steps)
    assert (ready.status, ready.reason, ready.message) == (
        Status.FALSE,
        Reason.PATH_ESCAPE,
        "deploy/../x escapes",
    )


def test_ready_is_unknown_while_a_step_is_missing():
    """A step that has not run yet leaves Ready Unknown/Progressing, naming the step."""
    ready = summarize_ready([ok(ConditionType.SOURCE_VERIFIED)])
    assert (ready.status, ready.reason) == (Status.UNKNOWN, Reason.PROGRESSING)
    assert "Validated" in ready.message


def test_transition_time_moves_only_when_status_changes():
    """Same status keeps the old lastTransitionTime; a flip takes the new time."""
    existing = [
        {"type": "Ready", "status": "True", "reason": "Succeeded", "lastTransitionTime": "t0"},
        {"type": "Applied", "status": "True", "reason": "Succeeded", "lastTransitionTime": "t0"},
        {"type": "Custom", "status": "True", "reason": "Theirs", "lastTransitionTime": "t0"},
    ]
    merged = merge_conditions(
        existing,
        [ok(ConditionType.READY), Condition(ConditionType.APPLIED, Status.FALSE, Reason.APPLY_FORBIDDEN)],
        now="t1",
    )
    by_type = {c["type"]: c for c in merged}
    assert by_type["Ready"]["lastTransitionTime"] == "t0"
    assert by_type["Applied"]["lastTransitionTime"] == "t1"
    assert by_type["Applied"]["reason"] == "ApplyForbidden"
    assert by_type["Custom"]["reason"] == "Theirs"
    assert [c["type"] for c in merged] == ["Ready", "Applied", "Custom"]
