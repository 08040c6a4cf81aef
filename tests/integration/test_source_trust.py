"""Signature verification and the fast-forward guard, with real git, gpg and ssh-keygen.

Repositories here are local bare repositories reached over file:// with the
test-only switch; transports and credentials are exercised against real
servers in test_source_transport.py.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import Namespace, SourceRule, VerifyMode
from gitward.errors import Stalled
from gitward.source import git, urls
from gitward.source.allow import AllowedSource
from gitward.source.commits import SignatureFormat
from gitward.trust.keys import TrustedKeys, from_config_maps
from gitward.trust.verify import TrustSettings, VerifiedSource, verify
from support.signing import GpgIdentity, SshIdentity, WorkRepo, tamper_message


@dataclass
class Identities:
    ssh: SshIdentity
    ssh_other: SshIdentity
    gpg: GpgIdentity
    gpg_subkey: GpgIdentity
    gpg_other: GpgIdentity
    gpg_expired: GpgIdentity
    gpg_revoked: GpgIdentity


@pytest.fixture(scope="module")
def ids(tmp_path_factory) -> Identities:
    root = tmp_path_factory.mktemp("identities")
    return Identities(
        ssh=SshIdentity.create(root / "ssh", "signer"),
        ssh_other=SshIdentity.create(root / "ssh", "other", principal="mallory@example.com"),
        gpg=GpgIdentity.create(root / "gpg"),
        gpg_subkey=GpgIdentity.create(
            root / "gpg-subkey", "Sub Signer <sub@example.com>", signing_subkey=True
        ),
        gpg_other=GpgIdentity.create(root / "gpg-other", "Mallory <mallory@example.com>"),
        gpg_expired=GpgIdentity.create(
            root / "gpg-expired", "Old Key <old@example.com>", expire="1y", faked_time="20200101T000000"
        ),
        gpg_revoked=GpgIdentity.create(root / "gpg-revoked", "Revoked <revoked@example.com>"),
    )


def trusted(ids: Identities, *, ssh_extra: str = "", revoked_ssh: str = "") -> TrustedKeys:
    """What a tenant's ConfigMaps would hold: every 'good' key, plus the expired and revoked ones."""
    return from_config_maps(
        [
            {
                "dev.asc": ids.gpg.public_armor(),
                "sub.asc": ids.gpg_subkey.public_armor(),
                "old.asc": ids.gpg_expired.public_armor(),
                "revoked.asc": ids.gpg_revoked.public_armor(),
                "allowed_signers": "\n".join(filter(None, [ids.ssh.allowed_signers_line(), ssh_extra])),
                **({"revoked_signers": revoked_ssh} if revoked_ssh else {}),
            }
        ]
    )


class Remote:
    """A work repository with a bare remote, and gitward's view of that remote."""

    def __init__(self, root: Path) -> None:
        self.work = WorkRepo.create(root / "work")
        self.bare = self.work.bare_remote("origin", root / "remote.git")
        self.options = git.FetchOptions(cache_root=root / "cache", allow_file_transport=True, timeout=30)
        self.source = AllowedSource(
            url=urls.parse(f"file://{self.bare}", allow_file=True),
            branch="main",
            rule=SourceRule(f"file://{self.bare}", ("main",)),
            target_namespace=Namespace("team-a"),
        )

    def fetch(self) -> tuple[git.Checkout, git.Repository]:
        checkout = git.fetch(self.source, app_uid="app-uid", credentials=None, options=self.options)
        return checkout, git.Repository(checkout.repo, options=self.options)

    def verify(
        self,
        keys: TrustedKeys,
        *,
        last_applied: str | None = None,
        mode: VerifyMode = VerifyMode.ALL,
        fast_forward: bool = True,
    ) -> VerifiedSource:
        checkout, repo = self.fetch()
        settings = TrustSettings(verify=mode, require_fast_forward=fast_forward)
        return verify(checkout, repo, last_applied=last_applied, settings=settings, keys=keys)

    def refused(self, keys: TrustedKeys, **kwargs) -> Stalled:
        with pytest.raises(Stalled) as error:
            self.verify(keys, **kwargs)
        return error.value


@pytest.fixture
def remote(tmp_path) -> Remote:
    return Remote(tmp_path)


def test_ssh_signed_head_is_verified_with_its_fingerprint(remote, ids):
    """An SSH-signed head passes; the result carries the key's SHA256 fingerprint and principal."""
    head = remote.work.commit(message="deploy web", sign=ids.ssh)
    remote.work.push()
    verified = remote.verify(trusted(ids))
    assert verified.commit == head
    assert verified.signer.format is SignatureFormat.SSH
    assert verified.signer.fingerprint == ids.ssh.fingerprint
    assert verified.signer.identity == "dev@example.com"
    assert verified.message == "deploy web"
    assert verified.author == "Dev One <dev@example.com>"


def test_openpgp_signed_head_is_verified_with_its_primary_fingerprint(remote, ids):
    """A gpg-signed head passes; the signer is the full primary fingerprint."""
    remote.work.commit(sign=ids.gpg)
    remote.work.push()
    verified = remote.verify(trusted(ids))
    assert verified.signer.format is SignatureFormat.OPENPGP
    assert verified.signer.fingerprint == ids.gpg.fingerprint
    assert verified.signer.subkey is None


def test_a_signing_subkey_of_a_trusted_primary_is_accepted(remote, ids):
    """A commit signed by a subkey verifies as its trusted primary key, the subkey recorded."""
    remote.work.commit(sign=ids.gpg_subkey)
    remote.work.push()
    verified = remote.verify(trusted(ids))
    assert verified.signer.fingerprint == ids.gpg_subkey.fingerprint
    assert verified.signer.subkey == ids.gpg_subkey.subkey_fingerprints()[0]


def test_unsigned_head_is_refused_naming_the_commit(remote, ids):
    """An unsigned head is UnsignedCommit, and the message names the full commit id."""
    head = remote.work.commit(message="sneaky")
    remote.work.push()
    error = remote.refused(trusted(ids))
    assert error.reason is Reason.UNSIGNED_COMMIT
    assert head in error.message


def test_verify_all_catches_an_unsigned_commit_under_a_signed_head(remote, ids):
    """With verify: all every new commit counts; with verify: head only the head does."""
    base = remote.work.commit(sign=ids.ssh)
    unsigned = remote.work.commit(message="unsigned in the middle")
    remote.work.commit(message="signed on top", sign=ids.ssh)
    remote.work.push()
    error = remote.refused(trusted(ids), last_applied=base)
    assert error.reason is Reason.UNSIGNED_COMMIT
    assert unsigned in error.message
    assert remote.verify(trusted(ids), last_applied=base, mode=VerifyMode.HEAD).verified_commits == (
        remote.work.head(),
    )


def test_verify_all_follows_the_second_parent_of_a_merge(remote, ids):
    """An unsigned commit brought in by a signed merge's second parent is refused."""
    base = remote.work.commit(sign=ids.ssh)
    remote.work.git("checkout", "-q", "-b", "feature")
    unsigned = remote.work.commit(message="feature work, unsigned")
    remote.work.git("checkout", "-q", "main")
    remote.work.commit(message="mainline", sign=ids.ssh)
    remote.work.merge("feature", sign=ids.gpg)
    remote.work.push()
    error = remote.refused(trusted(ids), last_applied=base)
    assert error.reason is Reason.UNSIGNED_COMMIT
    assert unsigned in error.message
    # Once the feature commit is signed too, the same shape passes and every commit was checked.
    remote.work.git("reset", "-q", "--hard", base)
    remote.work.git("checkout", "-q", "-B", "feature2")
    signed_feature = remote.work.commit(message="feature work, signed", sign=ids.ssh)
    remote.work.git("checkout", "-q", "main")
    remote.work.merge("feature2", sign=ids.gpg)
    remote.work.push(force=True)
    verified = remote.verify(trusted(ids), last_applied=base, fast_forward=True)
    assert signed_feature in verified.verified_commits


def test_first_apply_checks_the_head_only(remote, ids):
    """With no last applied revision, old unsigned history does not block the first apply."""
    remote.work.commit(message="ancient, unsigned")
    head = remote.work.commit(sign=ids.ssh)
    remote.work.push()
    assert remote.verify(trusted(ids)).verified_commits == (head,)


@pytest.mark.parametrize("signer", ["ssh_other", "gpg_other"])
def test_untrusted_signers_are_refused(remote, ids, signer):
    """A valid signature by a key the tenant does not trust is UntrustedSigner."""
    remote.work.commit(sign=getattr(ids, signer))
    remote.work.push()
    assert remote.refused(trusted(ids)).reason is Reason.UNTRUSTED_SIGNER


@pytest.mark.parametrize("signer", ["ssh", "gpg"])
def test_a_signature_that_does_not_match_the_content_is_invalid(remote, ids, signer):
    """Keep a trusted signature, change the commit message: InvalidSignature."""
    signed = remote.work.commit(message="original", sign=getattr(ids, signer))
    forged = remote.work.write_commit_object(tamper_message(remote.work.raw_commit(signed), b"replaced\n"))
    remote.work.git("update-ref", "refs/heads/main", forged)
    remote.work.push(refspec="main:refs/heads/main", force=True)
    assert remote.refused(trusted(ids)).reason is Reason.INVALID_SIGNATURE


def test_an_expired_openpgp_key_is_refused(remote, ids):
    """A signature by a key that has since expired is ExpiredKey."""
    remote.work.commit(sign=ids.gpg_expired)
    remote.work.push()
    assert remote.refused(trusted(ids)).reason is Reason.EXPIRED_KEY


def test_an_expired_ssh_key_is_refused(remote, ids):
    """An allowed signer whose valid-before has passed is ExpiredKey (checked now, not at commit time)."""
    remote.work.commit(sign=ids.ssh_other)
    remote.work.push()
    expired = ids.ssh_other.allowed_signers_line('valid-before="20200101"')
    assert remote.refused(trusted(ids, ssh_extra=expired)).reason is Reason.EXPIRED_KEY


def test_a_revoked_openpgp_key_is_refused(tmp_path, ids):
    """A signature by a key whose revocation the tenant holds is RevokedKey."""
    remote = Remote(tmp_path)
    revoked = GpgIdentity.create(tmp_path / "gpg-to-revoke", "Leaving <leaving@example.com>")
    remote.work.commit(sign=revoked)
    remote.work.push()
    revoked.revoke()
    keys = from_config_maps([{"leaving.asc": revoked.public_armor()}])
    assert remote.refused(keys).reason is Reason.REVOKED_KEY


def test_a_revoked_ssh_key_is_refused(remote, ids):
    """An SSH key listed in revoked_signers is RevokedKey even though it is also allowed."""
    remote.work.commit(sign=ids.ssh)
    remote.work.push()
    keys = trusted(ids, revoked_ssh=ids.ssh.public_line)
    assert remote.refused(keys).reason is Reason.REVOKED_KEY


def test_force_push_to_an_older_signed_commit_is_non_fast_forward(remote, ids):
    """Rewinding the branch to an older, validly signed commit is NonFastForward."""
    old = remote.work.commit(message="v1", sign=ids.ssh)
    remote.work.push()
    new = remote.work.commit(message="v2 with the fix", sign=ids.ssh)
    remote.work.push()
    assert remote.verify(trusted(ids), last_applied=old).commit == new
    remote.work.git("reset", "-q", "--hard", old)
    remote.work.push(force=True)
    error = remote.refused(trusted(ids), last_applied=new)
    assert error.reason is Reason.NON_FAST_FORWARD
    assert old[:12] in error.message
    assert new[:12] in error.message


def test_a_signed_commit_from_another_branch_is_non_fast_forward(remote, ids):
    """Pointing the branch at a signed commit from an unrelated branch is NonFastForward."""
    applied = remote.work.commit(message="main", sign=ids.ssh)
    remote.work.push()
    remote.work.git("checkout", "-q", "--orphan", "experiment")
    other = remote.work.commit(message="experiment", sign=ids.ssh)
    remote.work.push(refspec=f"{other}:refs/heads/main", force=True)
    assert remote.refused(trusted(ids), last_applied=applied).reason is Reason.NON_FAST_FORWARD


def test_a_last_applied_commit_that_is_unknown_fails_closed(remote, ids):
    """If the last applied commit cannot be found, ancestry cannot be proven: NonFastForward."""
    remote.work.commit(sign=ids.ssh)
    remote.work.push()
    assert remote.refused(trusted(ids), last_applied="e" * 40).reason is Reason.NON_FAST_FORWARD


def test_only_the_branch_is_resolved_never_a_tag_of_the_same_name(remote, ids):
    """A tag called `main` pointing at an unsigned commit is ignored; the branch head is used."""
    signed = remote.work.commit(message="the real main", sign=ids.ssh)
    remote.work.push()
    remote.work.git("checkout", "-q", "--orphan", "evil")
    evil = remote.work.commit(message="evil, unsigned")
    remote.work.git("tag", "main", evil)
    remote.work.git("push", "-q", "origin", "refs/tags/main")
    checkout, _ = remote.fetch()
    assert checkout.commit == signed
    assert remote.verify(trusted(ids)).commit == signed


def test_a_tenant_without_keys_trusts_nothing(remote, ids):
    """No keys at all is UntrustedSigner, even for a signed commit."""
    remote.work.commit(sign=ids.ssh)
    remote.work.push()
    assert remote.refused(TrustedKeys()).reason is Reason.UNTRUSTED_SIGNER


def test_no_keyring_or_allowed_signers_file_outlives_a_verification(remote, ids, tmp_path, monkeypatch):
    """gpg and ssh-keygen run in throwaway homes that are gone afterwards, and never in ours."""
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "must-not-be-used"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    remote.work.commit(sign=ids.gpg)
    remote.work.commit(sign=ids.ssh)
    remote.work.push()
    remote.verify(trusted(ids))
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "must-not-be-used").exists()
