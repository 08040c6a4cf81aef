"""One GitOpsApp, end to end: decide, deploy or roll back, record, and write status once.

The pipeline steps live in ``gitward.reconcile``; this module decides which
of them to run for an app (``decide`` is pure), turns their results and
typed errors into a history record and one status write, and handles the
two ways back: ``spec.rollbackTo`` (re-verified, then held until the branch
moves on) and automatic rollback when a revision fails its health check.
Nothing here knows about kopf; ``gitward.handlers`` calls
:func:`reconcile_app` from a daemon per app.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gitward.api.budgets import DEFAULT_CEILINGS, Budgets
from gitward.api.conditions import (
    STEP_CONDITIONS,
    Condition,
    ConditionType,
    Reason,
    Status,
    merge_conditions,
    summarize_ready,
)
from gitward.api.resources import Trigger, VerifyMode
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.history import store
from gitward.history.records import Attempt, successful_commits
from gitward.history.records import Outcome as HistoryOutcome
from gitward.kube.clients import ServiceAccountRef
from gitward.kube.objects import ObjectRef, Objects
from gitward.reconcile import Deployed, deploy
from gitward.render.load import DEFAULT_KUSTOMIZE
from gitward.source import git
from gitward.tenants.resolve import Reader, ResolvedApp, resolve
from gitward.trust.verify import TrustSettings, VerifiedSource, verify

_LOG = logging.getLogger(__name__)


class Action(enum.StrEnum):
    """What a reconcile decided to do."""

    SKIP = "skip"  # nothing changed since the last attempt: no apply, no status write
    HOLD = "hold"  # held at a rollback until the branch moves past the head seen then
    DEPLOY = "deploy"  # apply the branch head
    ROLLBACK = "rollback"  # apply spec.rollbackTo


def decide(status: Mapping[str, Any], *, generation: int, head: str, rollback_to: str, force: bool) -> Action:
    """Pure: the action for this reconcile, from the app's status, the branch head and the spec."""
    held = status.get("rollback") or {}
    if rollback_to:
        if held.get("commit") == rollback_to:
            if held.get("released"):
                pass  # the hold ended when the branch moved on; follow the branch again
            elif head == held.get("heldAtHead") or head == rollback_to:
                return Action.HOLD
            else:
                return Action.DEPLOY
        else:
            return Action.ROLLBACK
    unchanged = head == status.get("lastAttemptedRevision") and generation == status.get("observedGeneration")
    if unchanged and not force:
        return Action.SKIP
    return Action.DEPLOY


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the pipeline needs from the outside world, wired once by the operator."""

    reader: Reader
    operator: Objects
    as_tenant: Callable[[str, str], Objects]
    fetch_options: git.FetchOptions
    kustomize_command: Sequence[str] = DEFAULT_KUSTOMIZE
    operator_account: ServiceAccountRef | None = (
        None  # the operator's own ServiceAccount, when it runs as one
    )
    now: Callable[[], str] = field(default=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    ceilings: Budgets = DEFAULT_CEILINGS  # what no tenant's spec.limits may exceed


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a reconcile did, for the caller's scheduling and metrics."""

    action: Action
    reason: Reason
    ready: bool
    retry_after: float | None = None
    commit: str = ""


_STEP_OF = {
    Reason.TENANT_NOT_FOUND: ConditionType.SOURCE_VERIFIED,
    Reason.SOURCE_NOT_ALLOWED: ConditionType.SOURCE_VERIFIED,
    Reason.BRANCH_NOT_ALLOWED: ConditionType.SOURCE_VERIFIED,
    Reason.INVALID_URL: ConditionType.SOURCE_VERIFIED,
    Reason.FETCH_FAILED: ConditionType.SOURCE_VERIFIED,
    Reason.UNSIGNED_COMMIT: ConditionType.SOURCE_VERIFIED,
    Reason.UNTRUSTED_SIGNER: ConditionType.SOURCE_VERIFIED,
    Reason.INVALID_SIGNATURE: ConditionType.SOURCE_VERIFIED,
    Reason.EXPIRED_KEY: ConditionType.SOURCE_VERIFIED,
    Reason.REVOKED_KEY: ConditionType.SOURCE_VERIFIED,
    Reason.NON_FAST_FORWARD: ConditionType.SOURCE_VERIFIED,
    Reason.ROLLBACK_NOT_ALLOWED: ConditionType.SOURCE_VERIFIED,
    Reason.NAMESPACE_VIOLATION: ConditionType.VALIDATED,
    Reason.PATH_ESCAPE: ConditionType.VALIDATED,
    Reason.SYMLINK_OUT_OF_BOUNDS: ConditionType.VALIDATED,
    Reason.MANIFEST_TOO_LARGE: ConditionType.VALIDATED,
    Reason.YAML_REJECTED: ConditionType.VALIDATED,
    Reason.DUPLICATE_KEY: ConditionType.VALIDATED,
    Reason.REMOTE_REF_FORBIDDEN: ConditionType.VALIDATED,
    Reason.FORBIDDEN_KIND: ConditionType.VALIDATED,
    Reason.POLICY_VIOLATION: ConditionType.VALIDATED,
    Reason.PLAINTEXT_SECRET: ConditionType.VALIDATED,
    Reason.HEALTH_TIMEOUT: ConditionType.HEALTHY,
    Reason.ROLLED_BACK: ConditionType.HEALTHY,
}


def step_of(reason: Reason) -> ConditionType:
    """The step condition a reason belongs to (apply-time reasons by default)."""
    return _STEP_OF.get(reason, ConditionType.APPLIED)


def _conditions_for_failure(reason: Reason, message: str, generation: int) -> list[Condition]:
    failing = step_of(reason)
    before = list(STEP_CONDITIONS)[: list(STEP_CONDITIONS).index(failing)]
    conditions = [Condition(t, Status.TRUE, Reason.SUCCEEDED, "", generation) for t in before]
    conditions.append(Condition(failing, Status.FALSE, reason, message, generation))
    return conditions


class _AppRun:
    """One reconcile of one app: keeps the app's identity and writes its status and records."""

    def __init__(self, app: Mapping[str, Any], services: Services, trigger: Trigger) -> None:
        self.app = app
        self.services = services
        self.trigger = trigger
        metadata = app.get("metadata") or {}
        self.namespace = str(metadata.get("namespace", ""))
        self.name = str(metadata.get("name", ""))
        self.uid = str(metadata.get("uid", ""))
        self.generation = int(metadata.get("generation") or 0)
        self.status: Mapping[str, Any] = app.get("status") or {}
        self.started = services.now()
        self.ref = ObjectRef("gitward.dev", "v1alpha1", "GitOpsApp", self.namespace, self.name)

    def write_status(self, conditions: Sequence[Condition], **fields: object) -> None:
        explicit = [c for c in conditions if c.type is ConditionType.READY]
        steps = [c for c in conditions if c.type is not ConditionType.READY]
        ready = explicit[-1] if explicit else None
        if ready is None:
            ready = summarize_ready(conditions_from(self.status, steps), observed_generation=self.generation)
        merged = merge_conditions(
            self.status.get("conditions") or (), [*steps, ready], now=self.services.now()
        )
        status = {"observedGeneration": self.generation, "conditions": merged, **fields}
        if all(self.status.get(key) == value for key, value in status.items()):
            return  # nothing new to say: no write, so a failing poll does not churn the object
        self.services.operator.merge_patch(self.ref, {"status": status}, subresource="status")

    def record(self, attempt_fields: Mapping[str, Any], *, resolved: ResolvedApp | None) -> None:
        if not attempt_fields.get("commit"):
            return
        attempt = Attempt(
            app_namespace=self.namespace,
            app_name=self.name,
            app_uid=self.uid,
            tenant=resolved.tenant_name if resolved else str((self.app.get("spec") or {}).get("tenant", "")),
            started_at=self.started,
            finished_at=self.services.now(),
            generation=self.generation,
            **attempt_fields,
        )
        limit = resolved.spec.history_limit if resolved else 50
        store.record(self.services.operator, attempt, history_limit=limit)


def conditions_from(status: Mapping[str, Any], updates: Sequence[Condition]) -> list[Condition]:
    """Step conditions as they will stand: the stored ones, overridden by ``updates``."""
    by_type: dict[ConditionType, Condition] = {}
    for raw in status.get("conditions") or ():
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


@dataclass(slots=True)
class _Seen:
    """What a reconcile learned before it failed: the errors are reported about it."""

    resolved: ResolvedApp | None = None
    head: str = ""


def reconcile_app(
    app: Mapping[str, Any], services: Services, *, trigger: Trigger = Trigger.POLL, force: bool = False
) -> Outcome:
    """Reconcile one GitOpsApp: decide, deploy or roll back, record, and write status once.

    Every failure ends here as a condition with a reason: typed errors by
    their kind, and anything unforeseen as ``ReconcileError``, so no input
    can kill the app's daemon.
    """
    run = _AppRun(app, services, trigger)
    if (app.get("spec") or {}).get("suspend"):
        return _suspended(run)
    seen = _Seen()
    try:
        return _reconcile(run, seen, force=force)
    except Waiting as error:
        run.write_status(_conditions_for_failure(error.reason, error.message, run.generation))
        return Outcome(
            Action.DEPLOY, error.reason, ready=False, retry_after=error.retry_after, commit=seen.head
        )
    except Stalled as error:
        head = seen.head or error.commit
        if seen.resolved is not None and head:
            # Refused for what the head is (over budget, broken objects): recorded once, and
            # not fetched again until the branch moves or the spec changes.
            return _refused(run, seen.resolved, head, error)
        run.write_status(
            _conditions_for_failure(error.reason, error.message, run.generation),
            lastAttemptedRevision=head or None,
        )
        return Outcome(Action.DEPLOY, error.reason, ready=False, commit=head)
    except Exception as error:  # noqa: BLE001 - no input may kill the app's daemon; the cause is logged
        _LOG.exception("unexpected error reconciling %s/%s", run.namespace, run.name)
        at = f" {seen.head[:12]}" if seen.head else ""
        message = f"unexpected {type(error).__name__} while reconciling{at}; the operator log has the details"
        run.write_status(_conditions_for_failure(Reason.RECONCILE_ERROR, message, run.generation))
        return Outcome(Action.DEPLOY, Reason.RECONCILE_ERROR, ready=False, retry_after=30, commit=seen.head)


def _suspended(run: _AppRun) -> Outcome:
    if (
        _ready_reason(run.status) != Reason.SUSPENDED
        or run.status.get("observedGeneration") != run.generation
    ):
        suspended = "reconciliation is suspended (spec.suspend)"
        run.write_status(
            [Condition(ConditionType.READY, Status.FALSE, Reason.SUSPENDED, suspended, run.generation)]
        )
    return Outcome(Action.SKIP, Reason.SUSPENDED, ready=False)


def _reconcile(run: _AppRun, seen: _Seen, *, force: bool) -> Outcome:
    """Resolve, look at the branch head, decide; fetch and deploy or roll back only when needed."""
    services = run.services
    seen.resolved = resolved = resolve(
        run.app,
        reader=services.reader,
        allow_file=services.fetch_options.allow_file_transport,
        ceilings=services.ceilings,
    )
    seen.head = git.remote_head(
        resolved.source,
        credentials=resolved.credentials,
        options=services.fetch_options,
        budgets=resolved.budgets,
    )
    action = decide(
        run.status,
        generation=run.generation,
        head=seen.head,
        rollback_to=resolved.spec.rollback_to,
        force=force,
    )
    if action in (Action.SKIP, Action.HOLD):
        reason = _ready_reason(run.status) or Reason.SUCCEEDED
        return Outcome(action, reason, ready=_is_ready(run.status), commit=seen.head)
    checkout = git.fetch(
        resolved.source,
        app_uid=resolved.uid,
        credentials=resolved.credentials,
        options=services.fetch_options,
        budgets=resolved.budgets,
        head=seen.head,
    )
    seen.head = checkout.commit
    if action is Action.ROLLBACK:
        return _rollback(run, resolved, checkout)
    return _deploy_head(run, resolved, checkout)


def _ready_reason(status: Mapping[str, Any]) -> Reason | None:
    for raw in status.get("conditions") or ():
        if raw.get("type") == "Ready":
            try:
                return Reason(str(raw.get("reason")))
            except ValueError:
                return None
    return None


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def _inventory(status: Mapping[str, Any]) -> list[ObjectRef]:
    return [ObjectRef.from_inventory(item) for item in status.get("inventory") or ()]


def _deploy_head(run: _AppRun, resolved: ResolvedApp, checkout: git.Checkout) -> Outcome:
    head = checkout.commit
    repo = git.Repository(checkout.repo, options=run.services.fetch_options, budgets=resolved.budgets)
    last_applied = run.status.get("lastAppliedRevision") or None
    try:
        verified = verify(
            checkout, repo, last_applied=last_applied, settings=resolved.trust, keys=resolved.keys
        )
    except Stalled as error:
        return _refused(run, resolved, head, error)
    held = run.status.get("rollback")
    release = {"rollback": {**held, "released": True}} if held else {}
    return _apply_verified(run, resolved, verified, trigger=run.trigger, attempted=head, extra_status=release)


def _rollback(run: _AppRun, resolved: ResolvedApp, checkout: git.Checkout) -> Outcome:
    target = resolved.spec.rollback_to
    head = checkout.commit
    repo = git.Repository(checkout.repo, options=run.services.fetch_options, budgets=resolved.budgets)
    try:
        _check_rollback_target(run, repo, target)
        # Re-verified as if it were the head, against the keys trusted now; no fast-forward
        # check, since going back is the point.
        verified = verify(
            replace(checkout, commit=target),
            repo,
            last_applied=None,
            settings=TrustSettings(verify=VerifyMode.HEAD, require_fast_forward=False),
            keys=resolved.keys,
        )
    except Stalled as error:
        return _refused(run, resolved, target, error, trigger=Trigger.ROLLBACK, attempted=head)
    hold = {"rollback": {"commit": target, "heldAtHead": head, "released": False}}
    message = f"rolled back to {target[:12]}; held there until the branch moves past {head[:12]}"
    return _apply_verified(
        run,
        resolved,
        verified,
        trigger=Trigger.ROLLBACK,
        attempted=head,
        extra_status=hold,
        success_message=message,
    )


def _check_rollback_target(run: _AppRun, repo: git.Repository, target: str) -> None:
    records = store.list_records(run.services.operator, run.namespace, run.name)
    if target not in successful_commits(records):
        raise Stalled(
            Reason.ROLLBACK_NOT_ALLOWED,
            f"{target[:12]} has no successful record; only commits applied before can be rolled back to",
        )
    if not repo.has_commit(target):
        raise Stalled(Reason.ROLLBACK_NOT_ALLOWED, f"{target[:12]} is not in the repository any more")


def _refused(
    run: _AppRun,
    resolved: ResolvedApp,
    commit: str,
    error: GitwardError,
    *,
    trigger: Trigger | None = None,
    attempted: str | None = None,
    outcome: HistoryOutcome = HistoryOutcome.REFUSED,
) -> Outcome:
    run.record(
        {"commit": commit, "trigger": trigger or run.trigger, "outcome": outcome, "reason": error.reason,
         "message": error.message},
        resolved=resolved,
    )  # fmt: skip
    run.write_status(
        _conditions_for_failure(error.reason, error.message, run.generation),
        lastAttemptedRevision=attempted or commit,
    )
    return Outcome(Action.DEPLOY, error.reason, ready=False, commit=commit)


def _attempt_fields(verified: VerifiedSource, trigger: Trigger) -> dict[str, Any]:
    return {"commit": verified.commit, "trigger": trigger, "signer": verified.signer.fingerprint,
            "author": verified.author, "subject": verified.message}  # fmt: skip


def _apply_verified(
    run: _AppRun,
    resolved: ResolvedApp,
    verified: VerifiedSource,
    *,
    trigger: Trigger,
    attempted: str,
    extra_status: Mapping[str, Any],
    success_message: str = "",
) -> Outcome:
    services = run.services
    commit = verified.commit
    try:
        deployed = deploy(
            resolved, verified, operator=services.operator, as_tenant=services.as_tenant,
            fetch_options=services.fetch_options, previous_inventory=_inventory(run.status),
            kustomize_command=services.kustomize_command, operator_account=services.operator_account,
        )  # fmt: skip
    except Waiting as error:
        run.write_status(_conditions_for_failure(error.reason, error.message, run.generation))
        return Outcome(Action.DEPLOY, error.reason, ready=False, retry_after=error.retry_after, commit=commit)
    except Stalled as error:
        return _refused(run, resolved, commit, error, trigger=trigger, attempted=attempted)
    changes = [c.to_record() for c in deployed.result.changes]
    inventory = [ref.to_inventory() for ref in deployed.result.inventory]
    fields = _attempt_fields(verified, trigger)
    if deployed.unhealthy is not None:
        return _unhealthy(run, resolved, verified, deployed, trigger=trigger)
    message = success_message or f"applied {commit[:12]}, signed by {verified.signer.fingerprint}"
    run.record(
        {**fields, "outcome": HistoryOutcome.APPLIED, "reason": Reason.SUCCEEDED, "message": message,
         "manifest_digest": deployed.rendered.digest, "changes": changes},
        resolved=resolved,
    )  # fmt: skip
    run.write_status(
        [Condition(t, Status.TRUE, Reason.SUCCEEDED, message, run.generation) for t in STEP_CONDITIONS],
        lastAppliedRevision=commit,
        lastAttemptedRevision=attempted,
        lastHealthyRevision=commit,
        lastAppliedDigest=deployed.rendered.digest,
        inventory=inventory,
        **extra_status,
    )
    return Outcome(Action.DEPLOY, Reason.SUCCEEDED, ready=True, commit=commit)


def _unhealthy(
    run: _AppRun, resolved: ResolvedApp, verified: VerifiedSource, deployed: Deployed, *, trigger: Trigger
) -> Outcome:
    """A revision that was applied but never became healthy: record it, and roll back if the app wants."""
    failure = deployed.unhealthy
    assert failure is not None  # noqa: S101 - only called for an unhealthy deploy
    failed = verified.commit
    run.record(
        {**_attempt_fields(verified, trigger), "outcome": HistoryOutcome.FAILED, "reason": failure.reason,
         "message": failure.message, "manifest_digest": deployed.rendered.digest,
         "changes": [c.to_record() for c in deployed.result.changes]},
        resolved=resolved,
    )  # fmt: skip
    healthy = run.status.get("lastHealthyRevision") or ""
    inventory = [ref.to_inventory() for ref in deployed.result.inventory]
    if not (resolved.spec.auto_rollback and healthy and healthy != failed):
        run.write_status(
            _conditions_for_failure(failure.reason, failure.message, run.generation),
            lastAppliedRevision=failed,
            lastAttemptedRevision=failed,
            inventory=inventory,
        )
        return Outcome(Action.DEPLOY, failure.reason, ready=False, commit=failed)
    repo = git.Repository(
        verified.checkout.repo, options=run.services.fetch_options, budgets=resolved.budgets
    )
    try:
        good = verify(
            replace(verified.checkout, commit=healthy),
            repo,
            last_applied=None,
            settings=TrustSettings(verify=VerifyMode.HEAD, require_fast_forward=False),
            keys=resolved.keys,
        )
        restored = deploy(
            resolved, good, operator=run.services.operator, as_tenant=run.services.as_tenant,
            fetch_options=run.services.fetch_options, previous_inventory=deployed.result.inventory,
            kustomize_command=run.services.kustomize_command, operator_account=run.services.operator_account,
        )  # fmt: skip
    except GitwardError as error:
        message = (
            f"{failed[:12]} failed its health check; rolling back to {healthy[:12]} failed: {error.message}"
        )
        run.write_status(
            _conditions_for_failure(error.reason, message, run.generation),
            lastAppliedRevision=failed,
            lastAttemptedRevision=failed,
            inventory=inventory,
        )
        return Outcome(Action.DEPLOY, error.reason, ready=False, commit=failed)
    message = f"{failed[:12]} failed its health check ({failure.message}); rolled back to {healthy[:12]}"
    run.record({**_attempt_fields(good, Trigger.AUTO_ROLLBACK), "outcome": HistoryOutcome.ROLLED_BACK,
                "reason": Reason.ROLLED_BACK, "message": message, "manifest_digest": restored.rendered.digest,
                "changes": [c.to_record() for c in restored.result.changes]}, resolved=resolved)  # fmt: skip
    conditions = [
        Condition(t, Status.TRUE, Reason.SUCCEEDED, "", run.generation) for t in STEP_CONDITIONS[:-1]
    ]
    conditions.append(
        Condition(ConditionType.HEALTHY, Status.FALSE, Reason.ROLLED_BACK, message, run.generation)
    )
    run.write_status(
        conditions,
        lastAppliedRevision=healthy,
        lastAttemptedRevision=failed,
        lastAppliedDigest=restored.rendered.digest,
        inventory=[ref.to_inventory() for ref in restored.result.inventory],
    )
    return Outcome(Action.ROLLBACK, Reason.ROLLED_BACK, ready=False, commit=healthy)
