"""Fetching the allowed branch's head into the app's cache repository, and nothing else.

One bare repository per app and URL, in a 0700 cache directory whose name
is an HMAC of both under a key kept in the cache root, so it cannot be
guessed; it is reused across reconciles. :func:`remote_head` looks at the
branch with one ``ls-remote`` so the caller can decide before anything is
downloaded; :func:`fetch` brings exactly ``refs/heads/<branch>`` (never a
tag of the same name, ``HEAD`` or an expression), and a fetch that fails
leaves no partial pack behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gitward.api.budgets import Budgets, describe
from gitward.api.conditions import Reason
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.source import urls
from gitward.source.allow import AllowedSource
from gitward.source.credentials import Credentials
from gitward.source.runner import FetchOptions, GitRunner, throwaway_home

_KEY_BYTES: Final = 32
SHA_RE: Final = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
HEAD_REF: Final = "refs/gitward/head"


@dataclass(frozen=True, slots=True)
class Checkout:
    """A branch head fetched into the app's cache repository."""

    repo: Path
    url: urls.RepoURL
    branch: str
    commit: str
    fetched: bool = field(default=True)


def _cache_key(root: Path) -> bytes:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)
    key_file = root / ".key"
    key = key_file.read_bytes() if key_file.exists() else b""
    if len(key) == _KEY_BYTES:
        return key
    # Written once under a temporary name and linked into place: two apps starting together
    # both end up with the one key that won, never a half-written one or a FileExistsError.
    candidate = root / f".key-{secrets.token_hex(8)}"
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(_KEY_BYTES))
    with contextlib.suppress(FileExistsError):
        os.link(candidate, key_file)
    candidate.unlink()
    return key_file.read_bytes()


def cache_dir(root: Path, *, app_uid: str, url: urls.RepoURL) -> Path:
    """An app's own repository cache: stable for the app and URL, unguessable without the key."""
    return keyed_cache_dir(root, f"{app_uid}\0{url.for_git}")


def keyed_cache_dir(root: Path, name: str) -> Path:
    """The repository cache for ``name``: stable, unguessable without the cache root's key."""
    digest = hmac.new(_cache_key(root), name.encode(), hashlib.sha256).hexdigest()
    return root / digest[:40]


def _check_transport(source: AllowedSource, credentials: Credentials | None, options: FetchOptions) -> None:
    url = source.url
    if url.scheme is urls.Scheme.FILE and not options.allow_file_transport:
        raise Stalled(Reason.INVALID_URL, "file:// URLs are not allowed")
    if url.scheme is urls.Scheme.SSH and (credentials is None or not credentials.known_hosts):
        raise Stalled(
            Reason.FETCH_FAILED,
            "an SSH source needs known_hosts in its secret: the server's host key must be pinned",
        )


def remote_head(
    source: AllowedSource,
    *,
    credentials: Credentials | None,
    options: FetchOptions,
    budgets: Budgets | None = None,
) -> str:
    """The commit ``refs/heads/<branch>`` points at on the server: one ``ls-remote``, nothing fetched.

    Deciding on the head before fetching means a head that was refused (over
    budget, broken objects) is never downloaded again until the branch moves.
    """
    _check_transport(source, credentials, options)
    with throwaway_home() as home:
        return ls_remote_head(GitRunner(options, credentials, home, budgets=budgets), source.url, source.ref)


def fetch(
    source: AllowedSource,
    *,
    app_uid: str = "",
    cache: Path | None = None,
    credentials: Credentials | None,
    options: FetchOptions,
    budgets: Budgets | None = None,
    head: str | None = None,
) -> Checkout:
    """Bring the exact head of ``refs/heads/<branch>`` into the app's cache repository.

    Only that one ref is ever asked for: not a tag of the same name, not
    ``HEAD``, not an expression. A poll that finds the head unchanged and
    already present returns after one ``ls-remote`` (none, when the caller
    passes the ``head`` it just saw with :func:`remote_head`). The repository
    is ``cache`` (a shared source's, see :mod:`gitward.source.shared`), else
    one of the app's own.
    """
    _check_transport(source, credentials, options)
    url = source.url
    repo = cache or cache_dir(options.cache_root, app_uid=app_uid, url=url)
    with throwaway_home() as home:
        runner = GitRunner(options, credentials, home, budgets=budgets)
        if not (repo / "HEAD").exists():
            repo.mkdir(mode=0o700, parents=True, exist_ok=True)
            runner.run(["init", "--quiet", "--bare", "--template=", str(repo)], what="git init")
        wanted = head or ls_remote_head(runner, url, source.ref)
        if local_head(runner, repo) == wanted:
            return Checkout(repo=repo, url=url, branch=source.branch, commit=wanted, fetched=False)
        try:
            _fetch_head(runner, repo, source, url)
        except GitwardError as error:
            error.commit = wanted  # a refusal is about this head: not retried until it moves
            raise
        fetched = local_head(runner, repo)
    if fetched is None:
        raise Waiting(Reason.FETCH_FAILED, f"git fetch {url.identity} {source.ref}: no commit was fetched")
    return Checkout(repo=repo, url=url, branch=source.branch, commit=fetched)


def _fetch_head(runner: GitRunner, repo: Path, source: AllowedSource, url: urls.RepoURL) -> None:
    what = f"git fetch {url.identity} {source.ref}"
    args = [
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--no-write-fetch-head",
        "--no-auto-gc",
    ]
    try:
        runner.run([*args, "--", url.for_git, f"+{source.ref}:{HEAD_REF}"], cwd=repo, what=what)
    except GitwardError:
        if _discard_partial_packs(repo) >= runner.budgets.fetch_bytes:
            # index-pack was stopped by the file-size limit (git then only says its output was
            # invalid): the pack it was writing reached the budget.
            limit = describe("fetch_bytes", runner.budgets.fetch_bytes)
            raise Stalled(
                Reason.SOURCE_TOO_LARGE, f"{what}: the fetch is larger than the budget of {limit}"
            ) from None
        raise


def _discard_partial_packs(repo: Path) -> int:
    """Remove what a failed fetch left behind in the cache; return the size of the largest piece."""
    largest = 0
    for partial in (repo / "objects" / "pack").glob("tmp_*"):
        with contextlib.suppress(OSError):
            largest = max(largest, partial.stat().st_size)
            partial.unlink()
    return largest


def ls_remote_head(runner: GitRunner, url: urls.RepoURL, ref: str) -> str:
    """The commit the server's ``ref`` points at; exactly that ref, nothing that merely ends like it."""
    out = runner.run(["ls-remote", "--heads", "--", url.for_git, ref], what=f"git ls-remote {url.identity}")
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref and SHA_RE.match(sha):
            return sha
    raise Waiting(
        Reason.FETCH_FAILED, f"branch {ref.removeprefix('refs/heads/')!r} not found in {url.identity}"
    )


def local_head(runner: GitRunner, repo: Path) -> str | None:
    """The commit last fetched into ``repo``, if any."""
    try:
        out = runner.run(
            ["rev-parse", "--verify", "--quiet", f"{HEAD_REF}^{{commit}}"], cwd=repo, what="rev-parse"
        )
    except GitwardError:
        return None
    sha = out.strip()
    return sha if SHA_RE.match(sha) else None
