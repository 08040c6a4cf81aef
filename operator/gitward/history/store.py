"""``history.record``: write an attempt as a GitOpsRevision, an Event on the app and an audit line.

Reads and writes go through :mod:`gitward.kube.objects` with the operator's
identity. Records are trimmed to the app's ``historyLimit``, oldest first.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping, Sequence
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


def record(
    objects: Objects, attempt: Attempt, *, history_limit: int, history: History | None = None
) -> Mapping[str, Any] | None:
    """Write the attempt; return the record, or None if this very attempt was already recorded."""
    key = (attempt.app_namespace, attempt.app_name, attempt.app_uid)
    existing = (
        history.records(objects, *key)
        if history is not None
        else list_records(objects, attempt.app_namespace, attempt.app_name)
    )
    previous = existing[-1] if existing else None
    body = revision_body(
        attempt,
        sequence=(sequence_of(previous) + 1) if previous else 1,
        previous_digest=_digest_of(previous) if previous else "",
    )
    try:
        created = objects.create(body)
        if created is None:  # the same attempt, repeated after a restart: already on record
            if history is not None:
                history.forget(*key)
            return None
        objects.create(event_body(attempt))
        logs.audit().info("change attempt", record=body["metadata"]["name"], **attempt.audit_fields())
        removed = to_remove([*existing, created], history_limit)
        for name in removed:
            objects.delete(
                ObjectRef(
                    "gitward.dev", resources.VERSION, resources.REVISION.kind, attempt.app_namespace, name
                )
            )
    except BaseException:
        if history is not None:
            history.forget(*key)  # whatever happened, the next attempt reads the records again
        raise
    if history is not None:
        kept = [r for r in [*existing, created] if r["metadata"]["name"] not in set(removed)]
        history.remember(*key, kept)
    return created


_DIGEST = "gitward.dev/spec-digest"  # a slim record's precomputed digest of its full spec


def _digest_of(record: Mapping[str, Any]) -> str:
    return str(record.get(_DIGEST) or spec_digest(record["spec"]))


def slim(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator needs of a record to decide and to chain the next one, and nothing more."""
    metadata, spec = record.get("metadata") or {}, record.get("spec") or {}
    kept = {key: spec.get(key) for key in ("commit", "outcome", "reason", "trigger")}
    if spec.get("images"):  # the digests a tag was resolved to: a rollback or drift correction reuses them
        kept["images"] = [{"image": i.get("image"), "digest": i.get("digest")} for i in spec["images"]]
    return {
        "metadata": {"name": metadata.get("name"), "labels": dict(metadata.get("labels") or {})},
        "spec": kept,
        _DIGEST: spec_digest(spec),
    }


class History:
    """Each app's records as this process last read or wrote them: one LIST per app per process life.

    Reading an app's records (its fast-forward baseline, its rollback targets, the chain's last
    link) was a LIST over every record in the namespace, twice per deploy. Only the operator
    writes records (admission), and only one process reconciles an app (its shard's Lease), so
    what it wrote is what there is; the cache is keyed by the app's uid (a new app of the same
    name starts afresh), dropped on any error, and holds slim records (a few fields each).
    """

    def __init__(self) -> None:
        self._apps: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def records(self, objects: Objects, namespace: str, app: str, uid: str) -> list[dict[str, Any]]:
        """The app's records, oldest first (slim: metadata name and labels, commit, outcome, reason)."""
        with self._lock:
            known = self._apps.get((namespace, app, uid))
        if known is not None:
            return list(known)
        found = [slim(r) for r in list_records(objects, namespace, app)]
        self.remember(namespace, app, uid, found)
        return list(found)

    def remember(self, namespace: str, app: str, uid: str, records: Sequence[Mapping[str, Any]]) -> None:
        """What the app's records are now."""
        with self._lock:
            self._apps[(namespace, app, uid)] = [slim(r) if _DIGEST not in r else dict(r) for r in records]

    def forget(self, namespace: str, app: str, uid: str = "") -> None:
        """Read the app's records from the API next time (every uid when ``uid`` is empty)."""
        with self._lock:
            for key in [k for k in self._apps if k[:2] == (namespace, app) and (not uid or k[2] == uid)]:
                del self._apps[key]
