"""One attempt at one GitOpsApp: decide, run the steps, then record and write status, once, at the end.

:func:`reconcile_app` is the only caller of the pipeline in the operator
(``handlers`` calls it from a daemon per app). It runs ``resolve`` and
``head``, lets the pure :func:`~gitward.reconcile.decide.decide` choose
skip, hold, deploy or roll back, runs the remaining steps, and turns what
happened into a :class:`Finish`: the records of the attempt (one; two
when an unhealthy commit is rolled back automatically), the conditions
and the status fields. :func:`_finish` writes them in one place, on
success and on every error. Errors are handled by their type: ``Waiting``
is retried with backoff and writes no revision; ``Stalled`` is refused,
recorded once for that head and not retried until the head or the spec
changes; anything else is ``ReconcileError``, so no input can kill the
app's daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gitward import metrics
from gitward.api.conditions import (
    STEP_CONDITIONS,
    Condition,
    ConditionType,
    Reason,
    Status,
    merge_conditions,
    summarize_ready,
)
from gitward.api.refs import ObjectRef
from gitward.api.resources import DriftPolicy, Trigger
from gitward.apply import drift
from gitward.apply.health import HealthStatus
from gitward.apply.run import PollingHealth, identity, workloads
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.history import store
from gitward.history.records import Attempt
from gitward.history.records import Outcome as RecordOutcome
from gitward.kube.objects import APIError
from gitward.policy import comply
from gitward.policy.check import PolicyViolations
from gitward.reconcile import rollback, steps
from gitward.reconcile.decide import conditions_for_failure, conditions_from, conditions_succeeded, decide
from gitward.reconcile.resolve import ResolvedApp, resolve
from gitward.reconcile.state import Run, Services
from gitward.reconcile.status import Action, Applying, Outcome, Step
from gitward.reconcile.steps import judge_tests, run_steps, start_tests

_LOG = logging.getLogger(__name__)
_NOTES_SHOWN = 10


@dataclass
class Finish:
    """What an attempt leaves behind: records, conditions, status fields, and what the caller learns."""

    outcome: Outcome
    conditions: list[Condition] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Parked:
    """An attempt whose objects are applied, waiting for their health outside any worker.

    The operator awaits ``targets`` by watch on its event loop (holding no
    thread and no tenant slot), then calls :func:`resume` with what it saw.
    """

    run: Run
    targets: dict[ObjectRef, int]
    timeout: float
    then: Callable[[], Finish | Parked]
    tests: bool = False  # waiting for the commit's test Jobs, not its workloads


def reconcile_app(
    app: Mapping[str, Any], services: Services, *, trigger: Trigger = Trigger.POLL, force: bool = False
) -> Outcome:
    """Reconcile one GitOpsApp: decide, deploy or roll back, then record and write status once."""
    result = begin(app, services, trigger=trigger, force=force)
    assert isinstance(result, Outcome)  # noqa: S101 - not parked: the health step waited itself
    return result


def begin(
    app: Mapping[str, Any],
    services: Services,
    *,
    trigger: Trigger = Trigger.POLL,
    force: bool = False,
    fresher_than: float = float("inf"),
    park: bool = False,
    status_extra: Mapping[str, Any] | None = None,
) -> Outcome | Parked:
    """Start an attempt; with ``park``, an apply waiting for health comes back as :class:`Parked`.

    ``status_extra`` are status fields the caller owns (the webhook route), written with the
    attempt's own status write, or alone if the attempt writes none and they changed.
    """
    run = Run(
        app=app,
        services=services,
        trigger=trigger,
        force=force,
        fresher_than=fresher_than,
        park=park,
        status_extra=dict(status_extra or {}),
    )
    if run.spec.get("suspend"):
        return _done(run, _suspended(run))
    return _done(run, _guarded(run, lambda: _attempt(run)))


def resume(parked: Parked, seen: Mapping[ObjectRef, HealthStatus]) -> Outcome | Parked:
    """Finish a parked attempt with the health its workloads reached."""
    run = parked.run
    if parked.tests:
        run.tests_seen = seen
    else:
        run.health_seen = seen
    return _done(run, _guarded(run, parked.then))


def _done(run: Run, result: Finish | Parked) -> Outcome | Parked:
    if isinstance(result, Parked):
        return result
    _finish(run, result)
    return result.outcome


def _suspended(run: Run) -> Finish:
    outcome = Outcome(Action.SKIP, Reason.SUSPENDED, ready=False)
    if run.status.ready_reason is Reason.SUSPENDED and run.status.observed_generation == run.generation:
        return Finish(outcome)
    suspended = "reconciliation is suspended (spec.suspend)"
    ready = Condition(ConditionType.READY, Status.FALSE, Reason.SUSPENDED, suspended, run.generation)
    return Finish(outcome, conditions=[ready])


def _guarded(run: Run, step: Callable[[], Finish | Parked]) -> Finish | Parked:
    """Run ``step``; whatever it raises becomes a Finish (no input may kill the app's daemon)."""
    try:
        return step()
    except Waiting as error:
        return _waiting(run, error)
    except Stalled as error:
        return _refused(run, error)
    except Exception as error:  # noqa: BLE001 - no input may kill the app's daemon; the cause is logged
        _LOG.exception("unexpected error reconciling %s/%s", run.namespace, run.name)
        at = f" {run.head[:12]}" if run.head else ""
        message = f"unexpected {type(error).__name__} while reconciling{at}; the operator log has the details"
        return Finish(
            Outcome(Action.DEPLOY, Reason.RECONCILE_ERROR, ready=False, retry_after=30, commit=run.head),
            conditions=conditions_for_failure(Reason.RECONCILE_ERROR, message, run.generation),
        )


def _attempt(run: Run) -> Finish | Parked:
    run_steps(run, stop_after=Step.HEAD)
    resolved = run.require_resolved()
    action = decide(
        run.status,
        generation=run.generation,
        head=run.head,
        rollback_to=resolved.spec.rollback_to,
        force=run.force,
    )
    if action in (Action.SKIP, Action.HOLD):
        checked = _check_drift(run)
        if checked is not None:
            return checked
        reason = run.status.ready_reason or Reason.SUCCEEDED
        return Finish(Outcome(action, reason, ready=run.status.ready, commit=run.head))
    run_steps(run, start=Step.FETCH, stop_after=Step.FETCH)
    if action is Action.ROLLBACK:
        return _roll_back(run, resolved.spec.rollback_to)
    return _deploy(run)


def _deploy(run: Run) -> Finish | Parked:
    """The branch head, through trust to health; a hold at an earlier rollback ends here."""
    held = run.status.hold
    release = {"rollback": {**held.to_status(), "released": True}} if held else {}
    return _deliver(run, trigger=run.trigger, attempted=run.head, extra=release)


def _roll_back(run: Run, target: str) -> Finish | Parked:
    """``spec.rollbackTo``: re-verified, applied, then held until the branch moves on."""
    try:
        rollback.check_target(run, target)
    except Stalled as error:
        return _refused(run, error, commit=target, trigger=Trigger.ROLLBACK, attempted=run.head)
    run.target = target
    hold = rollback.hold_for(run, target)
    message = f"rolled back to {target[:12]}; held there until the branch moves past {run.head[:12]}"
    return _deliver(
        run,
        trigger=Trigger.ROLLBACK,
        attempted=run.head,
        extra={"rollback": hold.to_status()},
        success=message,
    )


def _deliver(
    run: Run,
    *,
    trigger: Trigger,
    attempted: str,
    extra: Mapping[str, Any],
    success: str = "",
    judge: Callable[[Run], Finish | None] | None = None,
) -> Finish | Parked:
    """Trust, render, policy, dry-run and apply ``run.target`` (or the head); then its health.

    ``judge`` sees the dry-run's plan before anything is written, and may end the attempt there.
    """
    commit = run.target or run.head
    try:
        if not run.target:
            run.baseline = rollback.baseline(run)
        run_steps(run, start=Step.TRUST, stop_after=Step.DRY_RUN)
        if judge is not None and (judged := judge(run)) is not None:
            return judged
        run_steps(run, start=Step.APPLY, stop_after=Step.APPLY)
    except Waiting as error:
        return _waiting(run, error)
    except Stalled as error:
        return _refused(run, error, commit=commit, trigger=trigger, attempted=attempted)

    def then() -> Finish | Parked:
        return _after_apply(run, trigger=trigger, attempted=attempted, extra=extra, success=success)

    assert run.result is not None  # noqa: S101 - the apply step ran
    targets = workloads(run.result)
    if run.park and targets:
        # A thousand apps may wait for health at once: what only the apply needed is let go.
        run.plan, run.placed = None, ()
        if run.rendered is not None:
            run.rendered = replace(run.rendered, manifests=())
        return Parked(run, targets, run.require_resolved().spec.health_timeout_seconds, then)
    return then()


def _after_apply(
    run: Run, *, trigger: Trigger, attempted: str, extra: Mapping[str, Any], success: str
) -> Finish | Parked:
    """The health step, the commit's test Jobs if it declares any, then the attempt's record and status.

    Test Jobs run only for a new revision (not for a drift correction of one whose tests passed),
    with ``healthTimeout`` of their own; a parked attempt parks again while they run.
    """
    try:
        run_steps(run, start=Step.HEALTH)
        if run.tests and trigger is not Trigger.DRIFT:
            if run.tests_seen is None:
                targets = start_tests(run)
                timeout = run.require_resolved().spec.health_timeout_seconds
                if run.park:

                    def then() -> Finish | Parked:
                        return _after_apply(
                            run, trigger=trigger, attempted=attempted, extra=extra, success=success
                        )

                    return Parked(run, targets, timeout, then, tests=True)
                waiter = run.services.health or PollingHealth(run.services.operator)
                run.tests_seen = waiter.wait(targets, timeout=timeout)
            judge_tests(run)
    except Waiting as error:
        return _waiting(run, error)
    except Stalled as error:
        return _unhealthy(run, error, trigger=trigger)
    verified = run.verified
    rendered = run.rendered
    assert verified is not None and rendered is not None and run.result is not None  # noqa: S101, PT018
    _remember(run, verified.commit)
    if trigger is Trigger.DRIFT:
        return _corrected(run)
    message = success or f"applied {verified.commit[:12]}, signed by {verified.signer.fingerprint}"
    if run.notes:
        shown = list(run.notes[:_NOTES_SHOWN])
        more = len(run.notes) - len(shown)
        message += "; " + "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    record = _record_fields(run, trigger) | {
        "outcome": RecordOutcome.APPLIED,
        "reason": Reason.SUCCEEDED,
        "message": message,
    }
    return Finish(
        Outcome(Action.DEPLOY, Reason.SUCCEEDED, ready=True, commit=verified.commit),
        conditions=conditions_succeeded(message, run.generation),
        fields={
            "lastAppliedRevision": verified.commit,
            "lastAttemptedRevision": attempted,
            "lastHealthyRevision": verified.commit,
            "lastAppliedDigest": rendered.digest,
            "inventory": [ref.to_inventory() for ref in run.result.inventory],
            **extra,
        },
        records=[record],
    )


def _unhealthy(run: Run, failure: Stalled, *, trigger: Trigger) -> Finish:
    """Applied but never healthy: record it, and roll back to the last healthy commit if the app wants."""
    resolved = run.require_resolved()
    assert run.verified is not None and run.result is not None  # noqa: S101, PT018 - the health step ran
    failed = run.verified.commit
    failed_record = _record_fields(run, trigger) | {
        "outcome": RecordOutcome.FAILED,
        "reason": failure.reason,
        "message": failure.message,
    }
    _remember(run, failed)
    inventory = [ref.to_inventory() for ref in run.result.inventory]
    stuck = {"lastAppliedRevision": failed, "lastAttemptedRevision": failed, "inventory": inventory}
    healthy = rollback.healthy_target(run) if resolved.spec.auto_rollback else ""
    if not (healthy and healthy != failed):
        return Finish(
            Outcome(Action.DEPLOY, failure.reason, ready=False, commit=failed),
            conditions=conditions_for_failure(failure.reason, failure.message, run.generation),
            fields=stuck,
            records=[failed_record],
        )
    try:
        restored = rollback.restore(run, healthy)
    except GitwardError as error:
        message = (
            f"{failed[:12]} failed its health check; rolling back to {healthy[:12]} failed: {error.message}"
        )
        return Finish(
            Outcome(Action.DEPLOY, error.reason, ready=False, commit=failed),
            conditions=conditions_for_failure(error.reason, message, run.generation),
            fields=stuck,
            records=[failed_record],
        )
    assert restored.rendered is not None and restored.result is not None  # noqa: S101, PT018
    _remember(restored, healthy)
    check = "its tests" if failure.reason is Reason.TEST_FAILED else "its health check"
    message = f"{failed[:12]} failed {check} ({failure.message}); rolled back to {healthy[:12]}"
    rolled_back = _record_fields(restored, Trigger.AUTO_ROLLBACK) | {
        "outcome": RecordOutcome.ROLLED_BACK,
        "reason": Reason.ROLLED_BACK,
        "message": message,
    }
    conditions = [
        Condition(t, Status.TRUE, Reason.SUCCEEDED, "", run.generation) for t in STEP_CONDITIONS[:-1]
    ]
    conditions.append(
        Condition(ConditionType.HEALTHY, Status.FALSE, Reason.ROLLED_BACK, message, run.generation)
    )
    return Finish(
        Outcome(Action.ROLLBACK, Reason.ROLLED_BACK, ready=False, commit=healthy),
        conditions=conditions,
        fields={
            "lastAppliedRevision": healthy,
            "lastAttemptedRevision": failed,
            "lastAppliedDigest": restored.rendered.digest,
            "inventory": [ref.to_inventory() for ref in restored.result.inventory],
        },
        records=[failed_record, rolled_back],
    )


def _remember(run: Run, commit: str) -> None:
    """What this attempt left in the cluster, for the next drift checks."""
    expectations = run.services.expectations
    if expectations is not None and run.result is not None:
        expectations.remember((run.namespace, run.name, run.uid), commit, run.result.fingerprints)


def _check_drift(run: Run) -> Finish | Parked | None:
    """Whether the live objects still match the revision the app applied; correct or report if not.

    Every interval, for an app with nothing new in git: first from the watched fingerprints (no
    request); only if one changed, or none is known yet (a restarted operator), in full: the
    applied revision is rendered from the local cache and dry-run as the tenant, and the dry-run's
    answers compared with the live objects, field by field. None: nothing to do.
    """
    expectations = run.services.expectations
    if expectations is None or not run.status.inventory:
        return None
    key = (run.namespace, run.name, run.uid)
    expected = expectations.get(key)
    if expected is not None:
        differ = expectations.differing(key)
        if differ == []:
            metrics.DRIFT_CHECKS.labels("fast").inc()
            return None
        # Changed, or not known from the watches (one not synced, or refused): checked in full.
        applied = expected.commit
    else:
        applied = rollback.baseline(run)
        if not applied:
            return None
    metrics.DRIFT_CHECKS.labels("full").inc()
    run_steps(run, start=Step.FETCH, stop_after=Step.FETCH)
    if applied != run.head:
        run.target = applied
    run.reclaim = True
    return _deliver(
        run,
        trigger=Trigger.DRIFT,
        attempted=run.status.last_attempted or applied,
        extra={},
        judge=_judge_drift,
    )


def _judge_drift(run: Run) -> Finish | None:
    """After the dry-run of the applied revision: in sync, reported, or on to the correction (None)."""
    plan, resolved = run.plan, run.require_resolved()
    assert plan is not None and run.verified is not None  # noqa: S101, PT018 - the dry-run ran
    commit = run.verified.commit
    found, leave = [], set()
    for body in plan.bodies:
        ref = identity(ObjectRef.of(body))
        live = plan.existing.get(ref)
        if drift.disabled(body, live):
            leave.add(ref)
            continue
        if (change := drift.drifted(ObjectRef.of(body), body, plan.would.get(ref), live)) is not None:
            found.append(change)
    expectations = run.services.expectations
    reported = resolved.spec.drift_policy is DriftPolicy.REPORT
    if expectations is not None and (not found or reported):
        # What is live now is what later checks compare with: a reported drift is reported once.
        expectations.remember(
            (run.namespace, run.name, run.uid),
            commit,
            {
                ObjectRef.of(b): drift.fingerprint(live) if live is not None else drift.ABSENT
                for b in plan.bodies
                for live in [plan.existing.get(identity(ObjectRef.of(b)))]
            },
        )
    if not found:
        return _in_sync(run)
    if reported:
        return _reported(run, found)
    run.plan = replace(plan, leave=frozenset(leave))
    run.drift = tuple(found)
    return None


def _drift_condition(status: Status, reason: Reason, message: str, generation: int) -> Condition:
    return Condition(ConditionType.DRIFTED, status, reason, message, generation)


def _drift_summary(found: Sequence[drift.Drifted]) -> str:
    shown = [d.describe() for d in found[:_NOTES_SHOWN]]
    more = len(found) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _stored_drift(run: Run) -> Mapping[str, Any] | None:
    return next((c for c in run.status.conditions if c.get("type") == str(ConditionType.DRIFTED)), None)


def _in_sync(run: Run) -> Finish:
    """No drift; a Drifted condition left by an earlier report is turned False."""
    action = Action.HOLD if run.status.hold and not run.status.hold.released else Action.SKIP
    outcome = Outcome(
        action, run.status.ready_reason or Reason.SUCCEEDED, ready=run.status.ready, commit=run.head
    )
    stored = _stored_drift(run)
    if stored is None or stored.get("status") != str(Status.TRUE):
        return Finish(outcome)
    message = "the live objects match the applied revision again"
    return Finish(
        replace(outcome, action=Action.DRIFT),
        conditions=[_drift_condition(Status.FALSE, Reason.IN_SYNC, message, run.generation)],
    )


def _reported(run: Run, found: Sequence[drift.Drifted]) -> Finish:
    """``driftPolicy: report``: a record, an Event, the Drifted condition; nothing changed."""
    assert run.verified is not None  # noqa: S101 - the trust step ran
    commit = run.verified.commit
    message = f"drifted from {commit[:12]}: {_drift_summary(found)}"
    metrics.DRIFT.labels(run.namespace, run.name, "reported").inc(len(found))
    record = _record_fields(run, Trigger.DRIFT) | {
        "outcome": RecordOutcome.DRIFTED,
        "reason": Reason.DRIFTED,
        "message": message + " (driftPolicy: report: nothing was changed)",
        "changes": [],
        "drift": [d.to_record() for d in found],
    }
    return Finish(
        Outcome(Action.DRIFT, Reason.DRIFTED, ready=run.status.ready, commit=run.head),
        conditions=[_drift_condition(Status.TRUE, Reason.DRIFTED, message, run.generation)],
        records=[record],
    )


def _corrected(run: Run) -> Finish:
    """``driftPolicy: correct``: the applied revision was applied again; recorded with what had drifted."""
    assert run.verified is not None and run.result is not None  # noqa: S101, PT018 - applied
    commit = run.verified.commit
    message = f"corrected drift from {commit[:12]}: {_drift_summary(run.drift)}"
    metrics.DRIFT.labels(run.namespace, run.name, "corrected").inc(len(run.drift))
    record = _record_fields(run, Trigger.DRIFT) | {
        "outcome": RecordOutcome.APPLIED,
        "reason": Reason.DRIFT_CORRECTED,
        "message": message,
        "drift": [d.to_record() for d in run.drift],
    }
    return Finish(
        Outcome(Action.DRIFT, Reason.DRIFT_CORRECTED, ready=run.status.ready, commit=run.head),
        conditions=[_drift_condition(Status.FALSE, Reason.DRIFT_CORRECTED, message, run.generation)],
        records=[record],
    )


def _waiting(run: Run, error: Waiting) -> Finish:
    """Transient: say why, retry with backoff; no record (nothing was decided about the commit)."""
    return Finish(
        Outcome(Action.DEPLOY, error.reason, ready=False, retry_after=error.retry_after, commit=run.head),
        conditions=conditions_for_failure(error.reason, error.message, run.generation),
    )


def _refused(
    run: Run,
    error: Stalled,
    *,
    commit: str = "",
    trigger: Trigger | None = None,
    attempted: str | None = None,
) -> Finish:
    """Permanent for this head: recorded once (when a commit is known), not retried until it moves."""
    commit = commit or run.head or error.commit
    attempted = attempted or commit
    records = []
    # A drift correction refused (the tenant's RBAC changed, say) is found again every interval:
    # recorded when it starts, not at each check.
    repeated = trigger is Trigger.DRIFT and run.status.ready_reason is error.reason
    if run.resolved is not None and commit and not repeated:
        remedies = list(error.remedies) if isinstance(error, PolicyViolations) else []
        records.append(
            {
                **(_record_fields(run, trigger or run.trigger) if run.verified else {}),
                "commit": commit,
                "trigger": trigger or run.trigger,
                "outcome": RecordOutcome.REFUSED,
                "reason": error.reason,
                "message": error.message,
                **({"notes": [comply.INSTRUCTIONS, *remedies]} if remedies else {}),
            }
        )
    return Finish(
        Outcome(Action.DEPLOY, error.reason, ready=False, commit=commit),
        conditions=conditions_for_failure(error.reason, error.message, run.generation),
        fields={"lastAttemptedRevision": attempted or None},
        records=records,
    )


def _record_fields(run: Run, trigger: Trigger) -> dict[str, Any]:
    """What a record says about the verified commit and what applying it changed."""
    verified = run.verified
    if verified is None:
        return {"trigger": trigger}
    fields: dict[str, Any] = {
        "commit": verified.commit,
        "trigger": trigger,
        "signer": verified.signer.fingerprint,
        "author": verified.author,
        "subject": verified.message,
    }
    if run.rendered is not None and run.result is not None:
        fields["manifest_digest"] = run.rendered.digest
        fields["changes"] = [change.to_record() for change in run.result.changes]
    if run.notes:
        fields["notes"] = list(run.notes)
    if run.test_results:
        fields["tests"] = [result.to_record() for result in run.test_results]
    if run.images:
        fields["images"] = [
            {
                "image": i.image,
                "digest": i.digest,
                **({"signer": i.key_fingerprint} if i.key_fingerprint else {}),
            }
            for i in run.images
        ]
    return fields


def _finish(run: Run, finish: Finish) -> None:
    """The one place an attempt is written: its records (each with Event and audit line), then status."""
    records, fields = list(finish.records), dict(finish.fields)
    if "inventory" in fields:  # an apply completed: its own note, and an interrupted one's, are done
        fields["applying"] = None
        pending = run.status.applying
        if pending is not None and pending.commit not in {r.get("commit") for r in records}:
            records.insert(0, _interrupted(pending, fields))
    for record in records:
        _write_record(run, record)
    if finish.conditions:
        _write_status(run, finish.conditions, {**run.status_extra, **fields})
    elif any(run.status.raw.get(key) != value for key, value in run.status_extra.items()):
        run.services.operator.merge_patch(run.ref, {"status": dict(run.status_extra)}, subresource="status")


def _interrupted(pending: Applying, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The record of an apply the operator did not live to finish (found by the next one to complete)."""
    try:
        trigger = Trigger(pending.trigger)
    except ValueError:
        trigger = Trigger.POLL
    now = str(fields.get("lastAppliedRevision") or "")
    return {
        "commit": pending.commit,
        "trigger": trigger,
        "started_at": pending.started_at,
        "outcome": RecordOutcome.FAILED,
        "reason": Reason.INTERRUPTED,
        "message": (
            f"the operator stopped while applying {pending.commit[:12]}; {now[:12]} was applied after it, "
            "and what the interrupted apply had added and git no longer has was pruned"
        ),
    }


def _write_record(run: Run, fields: Mapping[str, Any]) -> None:
    resolved = run.resolved
    attempt = Attempt(
        **{
            "app_namespace": run.namespace,
            "app_name": run.name,
            "app_uid": run.uid,
            "tenant": resolved.tenant_name if resolved else str(run.spec.get("tenant", "")),
            "started_at": run.started,
            "finished_at": run.services.now(),
            "generation": run.generation,
            **fields,
        }
    )
    store.record(
        run.services.operator,
        attempt,
        history_limit=resolved.spec.history_limit if resolved else 50,
        history=run.services.history,
    )


def _write_status(run: Run, conditions: Sequence[Condition], fields: Mapping[str, Any]) -> None:
    explicit = [c for c in conditions if c.type is ConditionType.READY]
    steps = [c for c in conditions if c.type is not ConditionType.READY]
    ready = (
        explicit[-1]
        if explicit
        else summarize_ready(
            conditions_from(run.status.conditions, steps), observed_generation=run.generation
        )
    )
    merged = merge_conditions(run.status.conditions, [*steps, ready], now=run.services.now())
    status = {"observedGeneration": run.generation, "conditions": merged, **fields}
    if all(run.status.raw.get(key) == value for key, value in status.items()):
        return  # nothing new to say: no write, so a failing poll does not churn the object
    run.services.operator.merge_patch(run.ref, {"status": status}, subresource="status")


def prune_on_delete(app: Mapping[str, Any], services: Services) -> None:
    """An app being deleted with ``prune: true``: delete what it owns, as its tenant, with the same checks.

    The target namespace is re-validated against the tenant (no keys or
    credentials are needed to prune), and only objects that exist and carry
    this app's owner annotation are deleted, as in every reconcile. If the
    tenant no longer allows the namespace, nothing is pruned.
    """
    run = Run(app=app, services=services)
    if services.expectations is not None:
        services.expectations.forget((run.namespace, run.name, run.uid))
    if not run.spec.get("prune", True):
        return
    try:
        run.resolved = resolve_for_prune(run)
    except Stalled as error:
        _LOG.warning("not pruning for %s/%s: %s", run.namespace, run.name, error)
        return
    steps.applier(run).prune_owned(run.previous_inventory)
    try:  # the last run of its test Jobs, which no inventory lists
        steps.test_jobs(run).remove_stale(run.require_resolved().source.target_namespace)
    except APIError as error:
        _LOG.warning("not deleting the test Jobs of %s/%s: %s", run.namespace, run.name, error.message)


def resolve_for_prune(run: Run) -> ResolvedApp:
    """The app resolved against its tenant's namespace policy only."""
    services = run.services
    return resolve(
        run.app,
        reader=services.reader,
        allow_file=services.fetch_options.allow_file_transport,
        ceilings=services.ceilings,
        secrets=False,
    )
