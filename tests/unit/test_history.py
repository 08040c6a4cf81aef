"""History records: deterministic names, a hash chain, trimming, rollback targets."""

from __future__ import annotations

from gitward.api.conditions import Reason
from gitward.api.resources import Trigger
from gitward.history.records import (
    Attempt,
    Outcome,
    chain_breaks,
    last_applied,
    last_healthy,
    record_name,
    revision_body,
    spec_digest,
    successful_commits,
    to_remove,
)


def attempt(commit: str = "a" * 40, **overrides) -> Attempt:
    fields = {
        "app_namespace": "team-a", "app_name": "web", "app_uid": "uid-1", "tenant": "team-a", "commit": commit,
        "trigger": Trigger.POLL, "outcome": Outcome.APPLIED, "reason": Reason.SUCCEEDED, "message": "ok",
        "started_at": "2026-11-22T10:00:00Z", "finished_at": "2026-11-22T10:00:01Z", "generation": 1,
    }  # fmt: skip
    fields.update(overrides)
    return Attempt(**fields)


def test_the_same_attempt_gets_the_same_name():
    """Repeating an attempt (after a restart) maps to the same record name; another attempt does not."""
    assert record_name(attempt()) == record_name(attempt(finished_at="later"))
    assert record_name(attempt()) != record_name(
        attempt(outcome=Outcome.REFUSED, reason=Reason.UNSIGNED_COMMIT)
    )
    assert record_name(attempt()) != record_name(attempt(trigger=Trigger.ROLLBACK))
    # A push webhook only says "look now": the attempt repeated after a restart is a poll, and the same.
    assert record_name(attempt(trigger=Trigger.WEBHOOK)) == record_name(attempt())
    assert record_name(attempt()).startswith("web-aaaaaaaa-")


def test_each_drift_finding_is_its_own_record_and_a_repeated_one_is_not():
    """Drift is found again and again at one commit and generation: the chain position tells findings apart."""
    drift = attempt(trigger=Trigger.DRIFT, reason=Reason.DRIFT_CORRECTED)
    assert record_name(drift, "sha256:1") != record_name(drift, "sha256:2")
    assert record_name(drift, "sha256:1") == record_name(
        attempt(trigger=Trigger.DRIFT, reason=Reason.DRIFT_CORRECTED, started_at="later"), "sha256:1"
    )
    assert record_name(attempt(), "sha256:1") == record_name(attempt(), "sha256:2")  # a deploy: by what it is


def chain(count: int) -> list[dict]:
    records, previous = [], ""
    for index in range(1, count + 1):
        body = revision_body(attempt(f"{index:x}" * 40), sequence=index, previous_digest=previous)
        records.append(body)
        previous = spec_digest(body["spec"])
    return records


def test_a_changed_or_missing_record_breaks_the_chain():
    """An intact chain has no breaks; editing or deleting a record shows where."""
    records = chain(4)
    assert chain_breaks(records) == []
    records[1]["spec"]["outcome"] = "Refused"
    assert chain_breaks(records) == [records[2]["metadata"]["name"]]
    intact = chain(4)
    del intact[2]
    assert chain_breaks(intact) == [intact[2]["metadata"]["name"]]


def test_oldest_records_beyond_the_limit_are_removed():
    """historyLimit keeps the newest records."""
    records = chain(5)
    assert to_remove(records, 3) == [records[0]["metadata"]["name"], records[1]["metadata"]["name"]]
    assert to_remove(records, 10) == []


def test_rollback_targets_are_commits_applied_successfully():
    """Only Applied/Succeeded (or an auto-rollback's target) may be rolled back to."""
    good = revision_body(attempt("1" * 40), sequence=1, previous_digest="")
    refused = revision_body(
        attempt("2" * 40, outcome=Outcome.REFUSED, reason=Reason.UNSIGNED_COMMIT),
        sequence=2,
        previous_digest="",
    )
    failed = revision_body(
        attempt("3" * 40, outcome=Outcome.FAILED, reason=Reason.HEALTH_TIMEOUT),
        sequence=3,
        previous_digest="",
    )
    assert successful_commits([good, refused, failed]) == {"1" * 40}


def test_records_are_owned_by_their_app_and_carry_no_secret():
    """The record is owned by the app (garbage-collected with it) and holds only the listed fields."""
    body = revision_body(attempt(), sequence=1, previous_digest="")
    owner = body["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "GitOpsApp",
        "web",
        "uid-1",
        True,
    )
    assert set(body["spec"]) == {
        "app", "commit", "signer", "author", "message", "trigger", "changes", "outcome", "reason",
        "startedAt", "finishedAt", "previousDigest",
    }  # fmt: skip


def _record(sequence: int, commit: str, outcome: str, reason: str) -> dict:
    return {
        "metadata": {"name": f"r{sequence}", "labels": {"gitward.dev/sequence": str(sequence)}},
        "spec": {"commit": commit, "outcome": outcome, "reason": reason},
    }


def test_the_baseline_and_the_healthy_target_come_from_the_newest_fitting_record():
    """last_applied counts what reached the cluster (applied, rolled back, failed health); last_healthy only the healthy."""
    records = [
        _record(1, "a", "Applied", "Succeeded"),
        _record(3, "c", "Refused", "UnsignedCommit"),
        _record(2, "b", "Failed", "HealthTimeout"),
    ]
    assert last_applied(records) == "b"
    assert last_healthy(records) == "a"
    records.append(_record(4, "a", "RolledBack", "RolledBack"))
    assert (last_applied(records), last_healthy(records)) == ("a", "a")
    assert (last_applied([]), last_healthy([])) == ("", "")
