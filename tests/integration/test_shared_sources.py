"""One source, many apps: remote checks and fetches coalesce, with real git on a real repository.

A thousand apps that read one branch must cost one ``ls-remote`` per
freshness window and one fetch per new head, and apps starting together
must not race on the cache (the old per-app cache raised FileExistsError).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import Namespace, SourceRule
from gitward.errors import GitwardError
from gitward.source import fetch as fetching
from gitward.source import git, urls
from gitward.source.allow import AllowedSource
from gitward.source.shared import SharedSources, SourceKey
from support.signing import WorkRepo


def source(url: str, branch: str = "main") -> AllowedSource:
    return AllowedSource(
        url=urls.parse(url, allow_file=True),
        branch=branch,
        rule=SourceRule(url, (branch,)),
        target_namespace=Namespace("team-a"),
    )


@pytest.fixture
def repo(tmp_path: Path) -> tuple[WorkRepo, str]:
    work = WorkRepo.create(tmp_path / "work")
    bare = work.bare_remote("origin", tmp_path / "remote.git")
    work.commit({"deploy/a.yaml": "a: 1\n"}, message="one")
    work.push()
    return work, f"file://{bare}"


@pytest.fixture
def remote_checks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The real ls-remote, with the time each one started."""
    started: list[float] = []
    real = fetching.remote_head

    def counted(*args: Any, **kwargs: Any) -> str:
        started.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(fetching, "remote_head", counted)
    return started


def together(n: int, call: Callable[[], Any]) -> list[Any]:
    """Call ``call`` from ``n`` threads released at once; return results (or the exceptions raised)."""
    gate = threading.Barrier(n)
    results: list[Any] = [None] * n

    def one(index: int) -> None:
        gate.wait()
        try:
            results[index] = call()
        except Exception as error:  # noqa: BLE001 - collected for the assertions
            results[index] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_apps_asking_together_share_one_remote_check(tmp_path, repo, remote_checks):
    work, url = repo
    shared = SharedSources(git.FetchOptions(cache_root=tmp_path / "cache", allow_file_transport=True))
    allowed = source(url)
    key = SourceKey.of("tenant-a", allowed, None)
    asked = time.monotonic()
    heads = together(
        24, lambda: shared.head(key, allowed, credentials=None, budgets=None, fresher_than=asked - 30)
    )
    assert len(remote_checks) == 1
    assert set(heads) == {work.git("rev-parse", "HEAD").strip()}
    # Within the window the answer is reused, even after a push; a caller that needs a newer
    # answer (a webhook that arrived now) gets a new check.
    newer = work.commit({"deploy/a.yaml": "a: 2\n"}, message="two")
    work.push()
    old = shared.head(key, allowed, credentials=None, budgets=None, fresher_than=asked - 30)
    assert len(remote_checks) == 1
    assert old != newer
    fresh = shared.head(key, allowed, credentials=None, budgets=None, fresher_than=time.monotonic())
    assert fresh == newer
    assert len(remote_checks) == 2


def test_a_failing_source_costs_one_check_per_window_and_each_caller_gets_the_error(tmp_path, remote_checks):
    shared = SharedSources(git.FetchOptions(cache_root=tmp_path / "cache", allow_file_transport=True))
    allowed = source(f"file://{tmp_path / 'missing.git'}")
    key = SourceKey.of("tenant-a", allowed, None)
    asked = time.monotonic()
    errors = together(
        8, lambda: shared.head(key, allowed, credentials=None, budgets=None, fresher_than=asked - 30)
    )
    assert len(remote_checks) == 1
    assert all(isinstance(e, GitwardError) and e.reason is Reason.FETCH_FAILED for e in errors)
    assert len({id(e) for e in errors}) == len(errors)  # each caller raises its own copy


def test_apps_starting_together_fetch_once_into_one_cache(tmp_path, repo):
    work, url = repo
    shared = SharedSources(git.FetchOptions(cache_root=tmp_path / "cache", allow_file_transport=True))
    allowed = source(url)
    key = SourceKey.of("tenant-a", allowed, None)
    head = work.git("rev-parse", "HEAD").strip()
    checkouts = together(16, lambda: shared.fetch(key, allowed, credentials=None, budgets=None, head=head))
    assert not [c for c in checkouts if isinstance(c, BaseException)], checkouts
    assert {c.commit for c in checkouts} == {head}
    assert {c.repo for c in checkouts} == {shared.cache_dir(key)}
    assert shared.counts(key) == (0, 1)  # sixteen apps, one fetch
    # Another tenant reading the same repository has a cache of its own.
    other = SourceKey.of("tenant-b", allowed, None)
    assert shared.cache_dir(other) != shared.cache_dir(key)
    assert shared.fetch(other, allowed, credentials=None, budgets=None, head=head).fetched
