"""Deciding whether a fetched branch head may be used: ancestry first, then signatures.

``verify: head`` checks the new head; ``verify: all`` checks every commit in
``lastApplied..head`` (merge commits and everything their second parents
bring in), or the head alone on the first apply. With
``requireFastForward`` the head must descend from the last applied
revision; a last applied commit that is not in the repository cannot be
proven an ancestor, so that fails closed too. Only a :class:`VerifiedSource`
leaves this module: a refused commit raises, and nothing of it reaches a
later step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.api.resources import VerifyMode
from gitward.errors import Stalled
from gitward.source.commits import CommitObject, SignatureFormat
from gitward.source.fetch import Checkout
from gitward.source.repository import Repository
from gitward.trust.decide import Signer, check_fast_forward
from gitward.trust.gpg import OpenPGPVerifier
from gitward.trust.keys import TrustedKeys
from gitward.trust.ssh import SSHVerifier


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """The tenant's ``spec.trust`` as the verifier needs it."""

    verify: VerifyMode = VerifyMode.ALL
    require_fast_forward: bool = True


@dataclass(frozen=True, slots=True)
class VerifiedSource:
    """A head commit that passed every check, with what history needs to record."""

    checkout: Checkout
    commit: str
    signer: Signer
    author: str
    message: str
    verified_commits: tuple[str, ...]


def commits_to_verify(
    repo: Repository, *, head: str, last_applied: str | None, mode: VerifyMode, limit: int
) -> list[str]:
    """The commits whose signatures must be checked, oldest first."""
    if mode is VerifyMode.HEAD or last_applied is None:
        return [head]
    since = last_applied if repo.has_commit(last_applied) else None
    commits = repo.commits_between(since, head, limit=limit)
    if len(commits) > limit:
        raise Stalled(
            Reason.SOURCE_TOO_LARGE,
            f"more than {limit} new commits since {last_applied[:12]}: over the budget for one apply",
        )
    return list(reversed(commits)) or [head]


def verify(
    checkout: Checkout,
    repo: Repository,
    *,
    last_applied: str | None,
    settings: TrustSettings,
    keys: TrustedKeys,
    now: dt.datetime | None = None,
    limit: int | None = None,
) -> VerifiedSource:
    """Check ancestry and signatures of ``checkout.commit``; return it verified or raise ``Stalled``."""
    head = checkout.commit
    if settings.require_fast_forward and last_applied and last_applied != head:
        check_fast_forward(
            last_applied=last_applied, head=head, descends=repo.is_ancestor(last_applied, head)
        )
    if keys.empty:
        raise Stalled(
            Reason.UNTRUSTED_SIGNER, "the tenant trusts no key: add keys to its trust.keysFrom ConfigMaps"
        )
    to_check = commits_to_verify(
        repo, head=head, last_applied=last_applied, mode=settings.verify, limit=limit or repo.budgets.commits
    )
    repo.load(to_check)
    signers: dict[str, Signer] = {}
    with contextlib.ExitStack() as stack:
        openpgp: OpenPGPVerifier | None = None
        ssh: SSHVerifier | None = None
        for sha in to_check:
            commit = repo.commit(sha)
            fmt = commit.signature_format
            if fmt is None:
                raise Stalled(Reason.UNSIGNED_COMMIT, f"commit {sha} is not signed ({_describe(commit)})")
            if fmt is SignatureFormat.OPENPGP:
                openpgp = openpgp or stack.enter_context(OpenPGPVerifier(keys.openpgp))
                signers[sha] = openpgp.verify(commit)
            elif fmt is SignatureFormat.SSH:
                ssh = ssh or stack.enter_context(SSHVerifier(keys))
                signers[sha] = ssh.verify(commit, now=now)
            else:
                raise Stalled(
                    Reason.UNTRUSTED_SIGNER,
                    f"commit {sha[:12]} has a {fmt} signature; gitward trusts OpenPGP and SSH keys only",
                )
    head_commit = repo.commit(head)
    return VerifiedSource(
        checkout=checkout,
        commit=head,
        signer=signers[head],
        author=head_commit.author_name,
        message=head_commit.subject,
        verified_commits=tuple(to_check),
    )


def _describe(commit: CommitObject) -> str:
    return f"{commit.author_name}: {commit.subject[:80]!r}"
