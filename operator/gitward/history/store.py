"""``history.record``: write an attempt as a GitOpsRevision, an Event on the app and an audit line.

Reads and writes go through :mod:`gitward.kube.objects` with the operator's
identity. Records are trimmed to the app's ``historyLimit``, oldest first.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from gitward import logs
from gitward.api import resources
from gitward.api.refs import ObjectRef
from gitward.history.records import (
    APP_LABEL,
    Attempt,
    Outcome,
    revision_body,
    sequence_of,
    spec_digest,
    to_remove,
)
from gitward.kube.objects import Objects

REVISION_API = resources.API_VERSION
EVENT_MESSAGE_LIMIT = 1024


def list_records(objects: Objects, namespace: str, app: str) -> list[dict[str, Any]]:
    """The app's records, oldest first."""
    records = objects.list(
        REVISION_API, resources.REVISION.kind, namespace, label_selector=f"{APP_LABEL}={app}"
    )
    return sorted(records, key=sequence_of)


def event_body(attempt: Attempt) -> dict[str, Any]:
    """A core/v1 Event on the app describing the attempt."""
    warning = attempt.outcome in (Outcome.REFUSED, Outcome.FAILED) or attempt.reason.value == "RolledBack"
    message = f"{attempt.outcome} {attempt.commit[:12]} ({attempt.trigger}): {attempt.message}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{attempt.app_name}.", "namespace": attempt.app_namespace},
        "involvedObject": {
            "apiVersion": resources.API_VERSION,
            "kind": resources.APP.kind,
            "name": attempt.app_name,
            "namespace": attempt.app_namespace,
            "uid": attempt.app_uid,
        },
        "reason": str(attempt.reason),
        "message": message[:EVENT_MESSAGE_LIMIT],
        "type": "Warning" if warning else "Normal",
        "source": {"component": "gitward"},
        "reportingComponent": "gitward.dev/operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": attempt.finished_at,
        "lastTimestamp": attempt.finished_at,
        "count": 1,
    }


def record(objects: Objects, attempt: Attempt, *, history_limit: int) -> Mapping[str, Any] | None:
    """Write the attempt; return the record, or None if this very attempt was already recorded."""
    existing = list_records(objects, attempt.app_namespace, attempt.app_name)
    previous = existing[-1] if existing else None
    body = revision_body(
        attempt,
        sequence=(sequence_of(previous) + 1) if previous else 1,
        previous_digest=spec_digest(previous["spec"]) if previous else "",
    )
    created = objects.create(body)
    if created is None:  # the same attempt, repeated after a restart: already on record
        return None
    objects.create(event_body(attempt))
    logs.audit().info("change attempt", record=body["metadata"]["name"], **attempt.audit_fields())
    for name in to_remove([*existing, created], history_limit):
        objects.delete(
            ObjectRef("gitward.dev", resources.VERSION, resources.REVISION.kind, attempt.app_namespace, name)
        )
    return created
