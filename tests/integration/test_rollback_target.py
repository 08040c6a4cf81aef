"""A rollback target must have been applied, and must still be in the allowed branch's history (real git)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.reconcile import rollback
from gitward.reconcile.state import Run, Services
from gitward.source import git
from support.signing import WorkRepo


class RecordsOnly:
    """Stands in for the operator's client: only the records of the app are listed."""

    def __init__(self, applied: list[str]) -> None:
        self.records = [
            {
                "metadata": {"name": f"r{i}", "labels": {"gitward.dev/sequence": str(i)}},
                "spec": {"commit": sha, "outcome": "Applied", "reason": "Succeeded"},
            }
            for i, sha in enumerate(applied, start=1)
        ]

    def list(self, *_: Any, **__: Any) -> list[dict[str, Any]]:
        return self.records


def run_for(tmp_path: Path, work: WorkRepo, head: str, applied: list[str]) -> Run:
    services = Services(
        reader=None,  # type: ignore[arg-type]
        operator=RecordsOnly(applied),  # type: ignore[arg-type]
        as_tenant=lambda _ns, _sa: None,  # type: ignore[arg-type, return-value]
        fetch_options=git.FetchOptions(cache_root=tmp_path / "cache"),
    )
    run = Run(app={"metadata": {"name": "web", "namespace": "team-a"}}, services=services, head=head)
    run.repo = git.Repository(work.path / ".git", options=services.fetch_options)
    return run


def test_a_target_outside_the_branch_history_is_refused_even_with_a_successful_record(tmp_path):
    """A commit applied once from a branch since rewritten is not a rollback target: RollbackNotAllowed."""
    work = WorkRepo.create(tmp_path / "work")
    base = work.commit({"a.yaml": "a: 1\n"})
    applied = work.commit({"a.yaml": "a: 2\n"})
    work.git("reset", "-q", "--hard", base)
    head = work.commit({"a.yaml": "a: 3\n"})
    run = run_for(tmp_path, work, head, applied=[base, applied])
    with pytest.raises(Stalled) as refused:
        rollback.check_target(run, applied)
    assert refused.value.reason is Reason.ROLLBACK_NOT_ALLOWED
    assert "not in the history of the allowed branch" in refused.value.message
    rollback.check_target(run, base)  # an ancestor with a record is allowed


def test_a_target_without_a_successful_record_is_refused(tmp_path):
    """An ancestor that was never applied is not a rollback target either."""
    work = WorkRepo.create(tmp_path / "work")
    never = work.commit({"a.yaml": "a: 1\n"})
    head = work.commit({"a.yaml": "a: 2\n"})
    with pytest.raises(Stalled) as refused:
        rollback.check_target(run_for(tmp_path, work, head, applied=[head]), never)
    assert refused.value.reason is Reason.ROLLBACK_NOT_ALLOWED
