"""Test Jobs a revision declares: run as the tenant after the apply, before the revision counts as Healthy.

A Job annotated ``gitward.dev/hook: test`` (Argo CD's PostSync hook, Flagger's acceptance test) is
not applied with the rest of the commit. Once every workload is healthy, each test Job is created
as the tenant's ServiceAccount, the previous run of the same Job first deleted (Argo CD's
``BeforeHookCreation``: a Job's template is immutable, and a result must belong to this commit).
The revision is Healthy only when every test Job completes; a Job that fails, or does not finish
within ``healthTimeout``, is ``TestFailed`` and, with ``autoRollback``, brings back the last
healthy revision.

What a failed test leaves in the record is bounded and secret-free: the Job's own failure
condition, and for each failed container a tail of its log (read as the tenant, at most
:data:`LOG_LINES` lines and :data:`LOG_BYTES` bytes, cut by the API server) or, where the log
cannot be read, its termination message (which ``terminationMessagePolicy: FallbackToLogsOnError``
fills with the log's tail). Every value of the commit's Secrets is masked out of it first.

Test Jobs are not in the app's inventory and not watched for drift: they run once per revision.
Jobs of the app's tests that the commit no longer declares are deleted.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.apply import health
from gitward.apply.inventory import OWNER_ANNOTATION
from gitward.apply.run import FIELD_MANAGER, labelled
from gitward.errors import Stalled, Waiting
from gitward.kube.objects import APIError, Objects, classify
from gitward.policy.hooks import is_test
from gitward.render.manifests import Manifest

REVISION_ANNOTATION: Final = "gitward.dev/revision"
TEST_OF_LABEL: Final = "gitward.dev/test-of"  # a hash of the owning app: label values are short
CONTROLLER_UID_LABEL: Final = "batch.kubernetes.io/controller-uid"
LOG_LINES: Final = 40
LOG_BYTES: Final = 2048
_LOG_READ_BYTES: Final = 16 * 1024  # read more than is kept: masking comes before the cut
MAX_TESTS: Final = 20
_MIN_SECRET_CHARS: Final = 4  # shorter values would mask ordinary words
_DELETE_WAIT: Final = 60.0
REDACTED: Final = "[redacted]"


def split(manifests: Sequence[Manifest]) -> tuple[list[Manifest], list[Manifest]]:
    """The objects applied with the commit, and its test Jobs."""
    kept: list[Manifest] = []
    tests: list[Manifest] = []
    for manifest in manifests:
        (tests if is_test(manifest.obj) else kept).append(manifest)
    return kept, tests


def test_of(owner: str) -> str:
    """The label value that marks an app's test Jobs (owner strings are too long for a label)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def secret_values(manifests: Iterable[Manifest], *, revealed: Iterable[str] = ()) -> frozenset[str]:
    """What a log tail must not show, values too short to mask left out.

    The commit's Secrets' values as written and decoded, and every value SOPS decrypted
    (``revealed``), whatever object held it.
    """
    values: set[str] = set(revealed)
    for manifest in manifests:
        if (manifest.group, manifest.kind) != ("", "Secret"):
            continue
        for key in ("data", "stringData"):
            entries = manifest.obj.get(key) or {}
            if not isinstance(entries, Mapping):
                continue
            for raw in entries.values():
                text = str(raw)
                values.add(text)
                if key == "data":
                    with contextlib.suppress(ValueError):
                        values.add(base64.b64decode(text, validate=True).decode("utf-8"))
                else:
                    values.add(base64.b64encode(text.encode()).decode())
    return frozenset(v for v in values if len(v) >= _MIN_SECRET_CHARS)


def last_bytes(text: str, limit: int) -> str:
    """The end of ``text`` within ``limit`` bytes, from the start of a line when one fits."""
    data = text.encode()
    if len(data) <= limit:
        return text
    kept = data[-limit:].decode(errors="ignore")
    _, newline, rest = kept.partition("\n")
    return rest if newline and rest else kept


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value masked, longest first (a value may contain another).

    A text cut short (a log read up to a byte limit) may end in the first characters of a secret:
    that beginning is masked too.
    """
    ordered = sorted(secrets, key=len, reverse=True)
    for value in ordered:
        text = text.replace(value, REDACTED)
    for value in ordered:
        for length in range(len(value) - 1, _MIN_SECRET_CHARS - 1, -1):
            if text.endswith(value[:length]):
                return text[: len(text) - length] + REDACTED
    return text


@dataclass(frozen=True, slots=True)
class TestResult:
    """What one test Job did, as a record keeps it."""

    name: str
    succeeded: bool
    reason: str = ""
    message: str = ""
    log_tail: str = ""

    def to_record(self) -> dict[str, str]:
        """The record's ``tests`` entry."""
        entry = {"name": self.name, "outcome": "Succeeded" if self.succeeded else "Failed"}
        if self.reason:
            entry["reason"] = self.reason[:256]
        if self.message:
            entry["message"] = self.message[:1024]
        if self.log_tail:
            entry["logTail"] = self.log_tail[:LOG_BYTES]
        return entry


def failure(results: Sequence[TestResult]) -> Stalled | None:
    """``TestFailed`` naming every failed test, or None if all passed."""
    failed = [r for r in results if not r.succeeded]
    if not failed:
        return None
    detail = "; ".join(f"Job/{r.name}: {r.reason or 'failed'}: {r.message}".rstrip(": ") for r in failed)
    return Stalled(Reason.TEST_FAILED, f"{len(failed)} of {len(results)} test Job(s) failed: {detail}")


class TestJobs:
    """Runs an app's test Jobs in one namespace as the tenant: dry-run, start, and read the results."""

    def __init__(
        self,
        objects: Objects,
        *,
        owner: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.objects = objects
        self.owner = owner
        self._clock = clock
        self._sleep = sleep

    def body(self, manifest: Manifest, *, commit: str) -> dict[str, Any]:
        """The Job as gitward creates it: owned, labelled as this app's test, naming its commit."""
        obj = labelled(manifest, self.owner)  # a copy, with the owner annotation and managed-by label
        metadata = obj["metadata"]
        metadata["annotations"][REVISION_ANNOTATION] = commit
        metadata["labels"][TEST_OF_LABEL] = test_of(self.owner)
        return obj

    def dry_run(self, tests: Sequence[Manifest], *, commit: str) -> None:
        """Each test Job validated by the API server as the tenant, before anything is written.

        A create with ``generateName``: the Job of the previous revision may still exist, and a
        Job's template cannot be changed in place, so an apply would be refused for that alone.
        """
        if len(tests) > MAX_TESTS:
            raise Stalled(Reason.POLICY_VIOLATION, f"{len(tests)} test Jobs; at most {MAX_TESTS}")
        for manifest in tests:
            body = self.body(manifest, commit=commit)
            metadata = body["metadata"]
            ref = ObjectRef.of(body)
            metadata["generateName"] = f"{str(metadata.pop('name', ''))[:50]}-"
            try:
                live = self.objects.get(ref)
                if live is not None and not self._owned(live):
                    raise self._not_ours(ref)
                self.objects.create(body, dry_run=True)
            except APIError as error:
                raise classify(error, ref=ref, dry_run=True) from None

    @staticmethod
    def _not_ours(ref: ObjectRef) -> Stalled:
        return Stalled(
            Reason.OWNERSHIP_CONFLICT, f"{ref} exists and is not this app's test: it is left alone"
        )

    def _owned(self, live: Mapping[str, Any]) -> bool:
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        return bool(annotations.get(OWNER_ANNOTATION) == self.owner)

    def _gone(self, ref: ObjectRef) -> None:
        deadline = self._clock() + _DELETE_WAIT
        delay = 0.05
        while self.objects.get(ref) is not None:
            if self._clock() >= deadline:
                # Transient, and not TestFailed: the tests have not run, the same head must be tried again.
                raise Waiting(Reason.RECONCILE_ERROR, f"{ref}: the previous test run is still being deleted")
            self._sleep(delay)
            delay = min(delay * 2, 1.0)

    def remove_stale(self, namespace: str, *, keep: Iterable[str] = ()) -> None:
        """Delete this app's test Jobs but those named in ``keep`` (all of them when the app goes)."""
        kept = set(keep)
        for stale in self.objects.list(
            "batch/v1", "Job", namespace, label_selector=f"{TEST_OF_LABEL}={test_of(self.owner)}"
        ):
            name = str((stale.get("metadata") or {}).get("name", ""))
            if name not in kept and self._owned(stale):
                self.objects.delete(ObjectRef("batch", "v1", "Job", namespace, name))

    def start(self, tests: Sequence[Manifest], *, namespace: str, commit: str) -> dict[ObjectRef, int]:
        """Delete stale runs, create every test Job; return each with the generation to watch."""
        try:
            self.remove_stale(namespace, keep=(manifest.name for manifest in tests))
            started: dict[ObjectRef, int] = {}
            for manifest in tests:
                body = self.body(manifest, commit=commit)
                ref = ObjectRef.of(body)
                live = self.objects.get(ref)
                if live is not None:
                    if not self._owned(live):
                        raise self._not_ours(ref)
                    self.objects.delete(ref)
                    self._gone(ref)
                stored = self.objects.apply(body, field_manager=FIELD_MANAGER, force=False)
                started[ref] = int((stored.get("metadata") or {}).get("generation") or 0)
        except APIError as error:
            raise classify(error, ref=ObjectRef("batch", "v1", "Job", namespace, ""), dry_run=False) from None
        return started

    def results(
        self, seen: Mapping[ObjectRef, health.HealthStatus], *, secrets: Iterable[str]
    ) -> list[TestResult]:
        """Each test Job's outcome; for a failed one its condition and its failed containers' log tails."""
        hidden = frozenset(secrets)
        results = []
        for ref, status in seen.items():
            if status.health is health.Health.HEALTHY:
                results.append(TestResult(ref.name, succeeded=True, message=status.message))
                continue
            try:
                job = self.objects.get(ref) or {}
            except APIError:
                job = {}
            conditions = {
                str(c.get("type")): c
                for c in (job.get("status") or {}).get("conditions") or ()
                if isinstance(c, Mapping)
            }
            failed = conditions.get("Failed") or {}
            if failed.get("status") == "True":
                reason, message = str(failed.get("reason") or "Failed"), str(failed.get("message") or "")
            else:
                reason, message = "NotFinished", f"not finished in time: {status.message}"
            uid = str((job.get("metadata") or {}).get("uid") or "")
            tail = self._tail(ref, uid) if uid else ""
            if reason == "NotFinished" and job and self._owned(job):
                # A test that outlived its time must not keep running against what comes next
                # (the rollback's revision): it is stopped, its result is the record's.
                with contextlib.suppress(APIError):
                    self.objects.delete(ref)
            results.append(
                TestResult(
                    ref.name,
                    succeeded=False,
                    reason=reason,
                    message=redact(message, hidden),
                    log_tail=last_bytes(redact(tail, hidden), LOG_BYTES),
                )
            )
        return results

    def _tail(self, ref: ObjectRef, uid: str) -> str:
        """The log tail of this run's last failed container, else its termination message, else "".

        Pods are chosen by the uid of this very Job (a previous run's pods may still be going).
        The tail is read long and cut after masking, so a secret is never shown in part.
        """
        try:
            pods = self.objects.list(
                "v1", "Pod", ref.namespace, label_selector=f"{CONTROLLER_UID_LABEL}={uid}"
            )
        except APIError:
            return ""
        pods.sort(key=lambda pod: str((pod.get("metadata") or {}).get("creationTimestamp") or ""))
        for pod in reversed(pods):
            status = pod.get("status") or {}
            statuses = [
                *(status.get("initContainerStatuses") or ()),
                *(status.get("containerStatuses") or ()),
            ]
            for container in statuses:
                terminated = (container.get("state") or {}).get("terminated") or {}
                if not terminated or terminated.get("exitCode") == 0:
                    continue
                name = str(container.get("name", ""))
                try:
                    tail = self.objects.log_tail(
                        ref.namespace,
                        str(pod["metadata"]["name"]),
                        name,
                        lines=LOG_LINES,
                        max_bytes=_LOG_READ_BYTES,
                    )
                except APIError:
                    tail = ""
                if not tail.strip():
                    tail = str(terminated.get("message") or "")
                exit_code = terminated.get("exitCode")
                return f"container {name} exited {exit_code}:\n{tail}".rstrip()
        return ""
