"""The ways back: ``spec.rollbackTo`` (a commit applied before), and automatic rollback of an unhealthy one.

A rollback target must have a successful record and still be in the
repository; it is then re-verified against the keys trusted now and goes
through the same steps as any deploy (``reconcile.steps``), from render to
health. After a ``rollbackTo``, the app is held at the target until the
branch moves past the head seen then.
"""

from __future__ import annotations

from typing import Any

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.history import store
from gitward.history.records import last_applied, last_healthy, successful_commits
from gitward.reconcile.state import Run
from gitward.reconcile.status import Hold, Step
from gitward.reconcile.steps import run_steps


def records_of(run: Run) -> list[dict[str, Any]]:
    """The app's records, oldest first: from the operator's history cache when it has one."""
    history = run.services.history
    if history is not None:
        return history.records(run.services.operator, run.namespace, run.name, run.uid)
    return store.list_records(run.services.operator, run.namespace, run.name)


def baseline(run: Run) -> str:
    """The fast-forward baseline: the last commit applied, from the operator's own records.

    Only the operator writes records (admission, manifests/admission.yaml), so
    a rewound ``status.lastAppliedRevision`` moves nothing.
    """
    return last_applied(records_of(run))


def healthy_target(run: Run) -> str:
    """The automatic rollback target: the last commit a record says was applied and healthy."""
    return last_healthy(records_of(run))


def check_target(run: Run, target: str) -> None:
    """``RollbackNotAllowed`` unless ``target`` was applied before and is in the allowed branch's history."""
    if run.repo is None:
        raise RuntimeError("the fetch step has not run")
    records = records_of(run)
    if target not in successful_commits(records):
        raise Stalled(
            Reason.ROLLBACK_NOT_ALLOWED,
            f"{target[:12]} has no successful record; only commits applied before can be rolled back to",
        )
    if not run.repo.has_commit(target):
        raise Stalled(Reason.ROLLBACK_NOT_ALLOWED, f"{target[:12]} is not in the repository any more")
    if not run.repo.is_ancestor(target, run.head):
        raise Stalled(
            Reason.ROLLBACK_NOT_ALLOWED,
            f"{target[:12]} is not in the history of the allowed branch (head {run.head[:12]})",
        )


def hold_for(run: Run, target: str) -> Hold:
    """The hold a ``rollbackTo`` leaves: at ``target`` until the branch moves past today's head."""
    return Hold(commit=target, held_at_head=run.head)


def restore(failed: Run, healthy: str) -> Run:
    """Deploy ``healthy`` again after ``failed`` was applied but never became healthy; return that run.

    The new run starts from the failed one's fetch and prunes against its
    inventory (what is in the cluster now).
    """
    if failed.result is None:
        raise RuntimeError("only an applied run can be rolled back")
    again = Run(
        app=failed.app,
        services=failed.services,
        trigger=failed.trigger,
        resolved=failed.resolved,
        head=failed.head,
        checkout=failed.checkout,
        repo=failed.repo,
        target=healthy,
        previous=failed.result.inventory,
        limits=failed.limits,
    )
    return run_steps(again, start=Step.TRUST)
