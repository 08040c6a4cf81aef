"""What one change attempt looks like on record. Pure.

A record is a ``GitOpsRevision`` owned by its app. Its name is derived from
what the attempt was (app, commit, generation, trigger, outcome, reason), so
an operator that restarts half-way and repeats an attempt writes the same
name again, and the API server's "already exists" keeps history free of
duplicates. Each record carries the digest of the record before it
(``previousDigest``), chaining the history so that a removed or altered
record shows as a break in the chain.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitward.api import resources
from gitward.api.conditions import Reason
from gitward.api.resources import Trigger

APP_LABEL = "gitward.dev/app"
SEQUENCE_LABEL = "gitward.dev/sequence"
MAX_TESTS_RECORDED = 20
MAX_IMAGES_RECORDED = 500


class Outcome(enum.StrEnum):
    """How an attempt ended."""

    APPLIED = "Applied"
    REFUSED = "Refused"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    DRIFTED = "Drifted"  # drift found and reported (driftPolicy: report); nothing was changed


@dataclass(frozen=True, slots=True)
class Attempt:
    """Everything known about one change attempt, for the record, the Event and the audit line."""

    app_namespace: str
    app_name: str
    app_uid: str
    tenant: str
    commit: str
    trigger: Trigger
    outcome: Outcome
    reason: Reason
    message: str
    started_at: str
    finished_at: str
    generation: int
    signer: str = ""
    author: str = ""
    subject: str = ""
    manifest_digest: str = ""
    changes: Sequence[Mapping[str, str]] = field(default_factory=tuple)
    notes: Sequence[str] = field(default_factory=tuple)  # what policy left out or ignored
    drift: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # what had drifted (trigger drift)
    tests: Sequence[Mapping[str, str]] = field(default_factory=tuple)  # what the commit's test Jobs did
    images: Sequence[Mapping[str, str]] = field(default_factory=tuple)  # image, digest, and who signed it

    def key(self, previous_digest: str = "") -> str:
        """Identifies the attempt across operator restarts.

        A drift is found again and again at one commit, so a drift record is also identified by
        its place in the chain (the previous record's digest): a finding repeated after a restart
        is the same record, the next finding is a new one.
        """
        material = "\0".join(
            [
                self.app_uid,
                self.commit,
                str(self.generation),
                # A push webhook only says "look now": after a restart the same attempt is a poll.
                str(Trigger.POLL if self.trigger is Trigger.WEBHOOK else self.trigger),
                str(self.outcome),
                str(self.reason),
                *([previous_digest] if self.trigger is Trigger.DRIFT else []),
            ]
        )
        return hashlib.sha256(material.encode()).hexdigest()[:10]

    def audit_fields(self) -> dict[str, Any]:
        """The stable keys of the audit log line (no secret can be among them)."""
        return {
            "app": f"{self.app_namespace}/{self.app_name}",
            "tenant": self.tenant,
            "commit": self.commit,
            "signer": self.signer,
            "trigger": str(self.trigger),
            "outcome": str(self.outcome),
            "reason": str(self.reason),
            "changes": [f"{c.get('action')} {c.get('kind')}/{c.get('name')}" for c in self.changes],
            "message": self.message,
        }


def record_name(attempt: Attempt, previous_digest: str = "") -> str:
    """A DNS-safe, deterministic name for the attempt's record."""
    prefix = attempt.app_name[:40].rstrip("-.")
    return f"{prefix}-{attempt.commit[:8]}-{attempt.key(previous_digest)}"


def spec_digest(spec: Mapping[str, Any]) -> str:
    """The digest that the next record chains to."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def revision_body(attempt: Attempt, *, sequence: int, previous_digest: str) -> dict[str, Any]:
    """The ``GitOpsRevision`` for an attempt, owned (and garbage-collected) with its app."""
    spec: dict[str, Any] = {
        "app": attempt.app_name,
        "commit": attempt.commit,
        "signer": attempt.signer,
        "author": attempt.author[:512],
        "message": attempt.subject[:4096],
        "trigger": str(attempt.trigger),
        "changes": [dict(c) for c in attempt.changes][:10000],
        "outcome": str(attempt.outcome),
        "reason": str(attempt.reason),
        "startedAt": attempt.started_at,
        "finishedAt": attempt.finished_at,
        "previousDigest": previous_digest,
    }
    if attempt.manifest_digest:
        spec["manifestDigest"] = attempt.manifest_digest
    if attempt.drift:
        spec["drift"] = [dict(d) for d in attempt.drift][:1000]
    if attempt.notes:
        spec["notes"] = [note[:1024] for note in attempt.notes][:100]
    if attempt.tests:
        spec["tests"] = [dict(t) for t in attempt.tests][:MAX_TESTS_RECORDED]
    if attempt.images:
        spec["images"] = [dict(i) for i in attempt.images][:MAX_IMAGES_RECORDED]
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.REVISION.kind,
        "metadata": {
            "name": record_name(attempt, previous_digest),
            "namespace": attempt.app_namespace,
            "labels": {APP_LABEL: attempt.app_name, SEQUENCE_LABEL: str(sequence)},
            "ownerReferences": [
                {
                    "apiVersion": resources.API_VERSION,
                    "kind": resources.APP.kind,
                    "name": attempt.app_name,
                    "uid": attempt.app_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def sequence_of(record: Mapping[str, Any]) -> int:
    """The record's position in its app's history."""
    try:
        return int(((record.get("metadata") or {}).get("labels") or {}).get(SEQUENCE_LABEL, "0"))
    except ValueError:
        return 0


def to_remove(records: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """Names of the oldest records beyond ``limit``."""
    ordered = sorted(records, key=sequence_of)
    return [str(r["metadata"]["name"]) for r in ordered[: max(0, len(ordered) - limit)]]


def chain_breaks(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Records whose ``previousDigest`` does not match the record before them (tampering or loss)."""
    ordered = sorted(records, key=sequence_of)
    broken = []
    for before, after in itertools.pairwise(ordered):
        if after["spec"].get("previousDigest") != spec_digest(before["spec"]):
            broken.append(str(after["metadata"]["name"]))
    return broken


def last_applied(records: Sequence[Mapping[str, Any]]) -> str:
    """The commit the operator last put in the cluster (applied, rolled back to, or applied but unhealthy)."""
    applied = (Outcome.APPLIED, Outcome.ROLLED_BACK, Outcome.FAILED)
    for record in sorted(records, key=sequence_of, reverse=True):
        if (record.get("spec") or {}).get("outcome") in applied:
            return str(record["spec"].get("commit") or "")
    return ""


def last_healthy(records: Sequence[Mapping[str, Any]]) -> str:
    """The commit last applied and found healthy (the automatic rollback target)."""
    for record in sorted(records, key=sequence_of, reverse=True):
        spec = record.get("spec") or {}
        if (spec.get("outcome"), spec.get("reason")) in (
            (Outcome.APPLIED, Reason.SUCCEEDED),
            (Outcome.ROLLED_BACK, Reason.ROLLED_BACK),
        ):
            return str(spec.get("commit") or "")
    return ""


def successful_commits(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """Commits that were applied successfully at least once (the targets a rollback may choose)."""
    return {
        str(r["spec"]["commit"])
        for r in records
        if r.get("spec", {}).get("outcome") in (Outcome.APPLIED, Outcome.ROLLED_BACK)
        and r.get("spec", {}).get("reason") in (Reason.SUCCEEDED, Reason.ROLLED_BACK)
    }
