"""Trust verdicts from verifier output, one reason per cause."""

from __future__ import annotations

import datetime as dt

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.source.commits import SignatureFormat
from gitward.trust.decide import check_fast_forward, decide_openpgp, decide_ssh, parse_ssh_time
from gitward.trust.keys import parse_allowed_signers

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PRIMARY = "89AE95769B7163EEDF8DF2C964CB71D521E5DAAF"
SUBKEY = "C5C87C3611D216E41A84451C66FB4D2354C1511F"
# Same last 8 hex digits (the short key ID) as PRIMARY, different key.
COLLIDING = "0000000000000000000000000000000021E5DAAF"


def status(*lines: str) -> str:
    return "\n".join(f"[GNUPG:] {line}" for line in ("NEWSIG", *lines)) + "\n"


def validsig(signing: str, primary: str) -> str:
    return f"VALIDSIG {signing} 2026-11-22 1795000000 0 4 0 22 10 00 {primary}"


def test_a_good_signature_by_a_trusted_primary_key():
    """GOODSIG + VALIDSIG with a trusted primary gives the signer and its fingerprint."""
    signer = decide_openpgp(
        status(
            "GOODSIG 64CB71D521E5DAAF Dev One <dev@example.com>",
            validsig(PRIMARY, PRIMARY),
            "TRUST_UNDEFINED 0 pgp",
        ),
        trusted_primaries={PRIMARY},
        commit=COMMIT,
    )
    assert (signer.format, signer.fingerprint, signer.subkey) == (SignatureFormat.OPENPGP, PRIMARY, None)
    assert signer.identity == "Dev One <dev@example.com>"


def test_a_signing_subkey_of_a_trusted_primary_is_accepted():
    """The primary fingerprint (last VALIDSIG field) decides; the subkey is recorded."""
    signer = decide_openpgp(
        status("GOODSIG 66FB4D2354C1511F Dev One", validsig(SUBKEY, PRIMARY)),
        trusted_primaries={PRIMARY.lower()},
        commit=COMMIT,
    )
    assert (signer.fingerprint, signer.subkey) == (PRIMARY, SUBKEY)


def test_a_short_key_id_collision_is_not_trusted():
    """A key sharing only the short key ID with a trusted key is UntrustedSigner."""
    with pytest.raises(Stalled) as refused:
        decide_openpgp(
            status("GOODSIG 0000000021E5DAAF Mallory", validsig(COLLIDING, COLLIDING)),
            trusted_primaries={PRIMARY},
            commit=COMMIT,
        )
    assert refused.value.reason is Reason.UNTRUSTED_SIGNER


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (
            ("ERRSIG 64CB71D521E5DAAF 22 10 00 1795000000 9 -", "NO_PUBKEY 64CB71D521E5DAAF"),
            Reason.UNTRUSTED_SIGNER,
        ),
        (("BADSIG 64CB71D521E5DAAF Dev One",), Reason.INVALID_SIGNATURE),
        (("EXPSIG 64CB71D521E5DAAF Dev One", validsig(PRIMARY, PRIMARY)), Reason.INVALID_SIGNATURE),
        (("EXPKEYSIG 64CB71D521E5DAAF Dev One", validsig(PRIMARY, PRIMARY)), Reason.EXPIRED_KEY),
        (("REVKEYSIG 64CB71D521E5DAAF Dev One", validsig(PRIMARY, PRIMARY)), Reason.REVOKED_KEY),
        (("ERRSIG 64CB71D521E5DAAF 99 10 00 1795000000 4 -",), Reason.INVALID_SIGNATURE),
        ((), Reason.INVALID_SIGNATURE),
        (
            ("GOODSIG 64CB71D521E5DAAF Dev One", validsig(PRIMARY, PRIMARY), "NEWSIG"),
            Reason.INVALID_SIGNATURE,
        ),
    ],
)
def test_each_gpg_failure_has_its_reason(lines, reason):
    """Unknown key, bad, expired signature, expired key, revoked key, unusable and missing verdicts."""
    with pytest.raises(Stalled) as refused:
        decide_openpgp(status(*lines), trusted_primaries={PRIMARY}, commit=COMMIT)
    assert refused.value.reason is reason
    assert COMMIT[:12] in refused.value.message


KEY_A = "AAAAC3NzaC1lZDI1NTE5AAAAIJ1IqlGKcFd3o4pJ8o3oP0bsZJXHY6hSjVbHqWnYkDxr"
KEY_B = "AAAAC3NzaC1lZDI1NTE5AAAAIG5Q3m0tVq4kq8dUuPv1v7bT2v8XfKx9hQJZ0c4V0Yt9"
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def signers(*lines: str):
    return parse_allowed_signers("\n".join(lines))


def fingerprint_of(blob: str) -> str:
    return signers(f"x ssh-ed25519 {blob}")[0].fingerprint


def test_ssh_signer_found_by_full_fingerprint():
    """The allowed-signers entry with the same full fingerprint is returned."""
    entry = decide_ssh(
        fingerprint_of(KEY_A),
        signers=signers(f"dev@example.com ssh-ed25519 {KEY_A}", f"other@example.com ssh-ed25519 {KEY_B}"),
        revoked=(),
        now=NOW,
        commit=COMMIT,
    )
    assert entry.principals == "dev@example.com"


@pytest.mark.parametrize(
    ("line", "revoked", "reason"),
    [
        (f"other@example.com ssh-ed25519 {KEY_B}", False, Reason.UNTRUSTED_SIGNER),
        (f"dev@example.com ssh-ed25519 {KEY_A}", True, Reason.REVOKED_KEY),
        (f'dev@example.com valid-before="20260101" ssh-ed25519 {KEY_A}', False, Reason.EXPIRED_KEY),
        (f'dev@example.com valid-after="20270101Z" ssh-ed25519 {KEY_A}', False, Reason.EXPIRED_KEY),
    ],
)
def test_ssh_refusals(line, revoked, reason):
    """Unknown key, revoked key, and a key outside its validity window each have their reason."""
    fingerprint = fingerprint_of(KEY_A)
    with pytest.raises(Stalled) as refused:
        decide_ssh(
            fingerprint,
            signers=signers(line),
            revoked={fingerprint} if revoked else (),
            now=NOW,
            commit=COMMIT,
        )
    assert refused.value.reason is reason


def test_ssh_validity_window_includes_now():
    """A key valid from the past until the future is accepted, with options parsed."""
    line = f'dev@example.com namespaces="git",valid-after="20200101",valid-before="20991231235959Z" ssh-ed25519 {KEY_A}'
    entry = decide_ssh(fingerprint_of(KEY_A), signers=signers(line), revoked=(), now=NOW, commit=COMMIT)
    assert entry.options["namespaces"] == "git"
    assert parse_ssh_time("20991231235959Z") > NOW


def test_fast_forward_guard():
    """No history, same head, or a descendant pass; anything else is NonFastForward naming both."""
    check_fast_forward(last_applied=None, head=COMMIT, descends=False)
    check_fast_forward(last_applied=COMMIT, head=COMMIT, descends=False)
    check_fast_forward(last_applied="f" * 40, head=COMMIT, descends=True)
    with pytest.raises(Stalled) as refused:
        check_fast_forward(last_applied="f" * 40, head=COMMIT, descends=False)
    assert refused.value.reason is Reason.NON_FAST_FORWARD
    assert "ffffffffffff" in refused.value.message
    assert COMMIT[:12] in refused.value.message
