"""Source budgets with real git: every limit holds before the bytes reach the operator, with the reason that names it."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from gitward.api.budgets import MIB, Budgets
from gitward.api.conditions import Reason
from gitward.api.resources import Namespace, SourceRule
from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.render.load import load
from gitward.source import git, urls
from gitward.source.allow import AllowedSource
from support import hostile
from support.pipeline import configmap
from support.signing import SshIdentity, WorkRepo


class Remote:
    """A work repository with a bare remote, fetched by gitward under a budget."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = WorkRepo.create(root / "work")
        self.bare = self.work.bare_remote("origin", root / "remote.git")
        self.signer = SshIdentity.create(root / "keys", "signer")
        self.options = git.FetchOptions(cache_root=root / "cache", allow_file_transport=True, timeout=60)
        self.source = AllowedSource(
            url=urls.parse(f"file://{self.bare}", allow_file=True),
            branch="main",
            rule=SourceRule(f"file://{self.bare}", ("main",)),
            target_namespace=Namespace("team-a"),
        )

    def fetch(self, budgets: Budgets) -> tuple[git.Checkout, git.Repository]:
        checkout = git.fetch(
            self.source, app_uid="app", credentials=None, options=self.options, budgets=budgets
        )
        return checkout, git.Repository(checkout.repo, options=self.options, budgets=budgets)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    made = Remote(tmp_path)
    made.work.commit({"deploy/config.yaml": configmap("settings", v="1")}, sign=made.signer)
    made.work.push()
    return made


def refused(action, reason: Reason) -> Stalled:
    with pytest.raises(Stalled) as caught:
        action()
    assert caught.value.reason is reason, caught.value
    return caught.value


def test_a_huge_commit_message_is_refused_from_its_size_before_it_is_read(remote):
    """A 64 MiB commit message is SourceTooLarge from git's size metadata; the operator never holds it."""
    hostile.huge_message(remote.work, 64 * MIB)
    remote.work.push()
    checkout, repo = remote.fetch(Budgets())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = refused(lambda: repo.load([checkout.commit]), Reason.SOURCE_TOO_LARGE)
    assert "budget for one object is 4Mi" in error.message
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 16 * 1024


def test_a_tree_that_fans_out_is_refused_after_a_bounded_read(remote):
    """10**7 paths from a few kilobytes of trees: SourceTooLarge, from a capped ls-tree, quickly."""
    hostile.fanout_tree(remote.work, depth=7, width=10, sign=remote.signer)
    remote.work.push()
    checkout, repo = remote.fetch(Budgets())
    error = refused(lambda: repo.tree(checkout.commit), Reason.SOURCE_TOO_LARGE)
    assert "20000 entries" in error.message


def test_tree_entries_and_tree_bytes_budgets(remote):
    """A tree over the entry budget, or whose files add up past the byte budget, is SourceTooLarge."""
    remote.work.commit({f"deploy/f{i}.txt": "x" * 1000 for i in range(30)}, sign=remote.signer)
    remote.work.push()
    checkout, repo = remote.fetch(Budgets(tree_entries=10))
    refused(lambda: repo.tree(checkout.commit), Reason.SOURCE_TOO_LARGE)
    repo = git.Repository(checkout.repo, options=remote.options, budgets=Budgets(tree_bytes=10_000))
    error = refused(lambda: repo.tree(checkout.commit), Reason.SOURCE_TOO_LARGE)
    assert "add up to" in error.message


def test_a_fetch_over_budget_is_stopped_by_the_file_size_limit_and_leaves_nothing(remote):
    """12 MB of random bytes against a 4 MiB fetch budget: SourceTooLarge, the partial pack removed."""
    hostile.incompressible_file(remote.work, "blobs/noise.bin", 12 * 1000 * 1000, sign=remote.signer)
    remote.work.push()
    error = refused(lambda: remote.fetch(Budgets(fetch_bytes=4 * MIB)), Reason.SOURCE_TOO_LARGE)
    assert "fetch is larger than the budget of 4Mi" in error.message
    assert error.commit == remote.work.head()
    packs = remote.root / "cache"
    assert not list(packs.rglob("tmp_pack_*"))


def test_a_large_blob_is_refused_before_it_is_read(remote):
    """A file over the object budget is never read into the operator."""
    hostile.incompressible_file(remote.work, "deploy/big.yaml", 2 * MIB, sign=remote.signer)
    remote.work.push()
    checkout, repo = remote.fetch(Budgets(object_bytes=1 * MIB))
    entry = next(e for e in repo.tree(checkout.commit) if e.path == "deploy/big.yaml")
    refused(lambda: repo.blobs([entry.oid]), Reason.SOURCE_TOO_LARGE)


def test_a_long_symlink_target_is_refused_without_reading_it(remote):
    """A symlink whose target is 1 MiB long is SymlinkOutOfBounds, decided from its size."""
    hostile.long_symlink(remote.work, "deploy/link.yaml", 1 * MIB, sign=remote.signer)
    remote.work.push()
    checkout, repo = remote.fetch(Budgets())
    error = refused(
        lambda: load(repo, checkout.commit, "deploy", limits=Limits()), Reason.SYMLINK_OUT_OF_BOUNDS
    )
    assert "deploy/link.yaml" in error.message


def test_objects_that_fail_git_integrity_checks_are_source_rejected(remote):
    """A commit with a malformed author line is refused by transfer.fsckObjects: permanent, for that head."""
    sha = hostile.malformed_commit(remote.bare, remote.work)
    error = refused(lambda: remote.fetch(Budgets()), Reason.SOURCE_REJECTED)
    assert error.commit == sha
    assert "integrity" in error.message


def test_git_runs_under_its_memory_budget(remote):
    """git that needs more memory than the budget dies alone, and the reason says so."""
    hostile.huge_message(remote.work, 64 * MIB)
    remote.work.push()
    error = refused(lambda: remote.fetch(Budgets(git_memory=48 * MIB)), Reason.SOURCE_TOO_LARGE)
    assert error.commit == remote.work.head()


def test_the_remote_head_is_read_without_fetching(remote):
    """remote_head answers from ls-remote alone: the cache stays empty."""
    head = git.remote_head(remote.source, credentials=None, options=remote.options, budgets=Budgets())
    assert head == remote.work.head()
    assert not (remote.root / "cache").exists() or not any((remote.root / "cache").rglob("objects"))
