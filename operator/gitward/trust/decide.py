"""Pure verdicts: what a verifier's output means, and whether a key may sign now.

The verifiers in ``gpg`` and ``ssh`` run the tools; the decisions about
their output live here, so every reason (``UntrustedSigner``,
``InvalidSignature``, ``ExpiredKey``, ``RevokedKey``) is unit-tested
against exact tool output. A signer is trusted only by its full primary
key fingerprint (OpenPGP) or its full ``SHA256:`` key fingerprint (SSH):
a key that merely shares a short key ID with a trusted one is not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.source.commits import SignatureFormat
from gitward.trust.keys import AllowedSigner

GNUPG_PREFIX = "[GNUPG:] "
_ERRSIG_NO_PUBKEY = "9"
_VALIDSIG_PRIMARY_FIELD = 10


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signed a commit, as recorded in history."""

    format: SignatureFormat
    fingerprint: str  # OpenPGP: primary key fingerprint; SSH: SHA256 key fingerprint
    identity: str = ""  # OpenPGP user id, or SSH principals
    subkey: str | None = None  # OpenPGP signing subkey fingerprint, when not the primary


def _short(commit: str) -> str:
    return commit[:12]


def decide_openpgp(status: str, *, trusted_primaries: Iterable[str], commit: str) -> Signer:
    """Turn ``gpg --status-fd`` output for one commit signature into a signer or a refusal."""
    trusted = {fpr.upper() for fpr in trusted_primaries}
    records = [
        line[len(GNUPG_PREFIX) :].split(" ") for line in status.splitlines() if line.startswith(GNUPG_PREFIX)
    ]
    by_keyword: dict[str, list[str]] = {}
    signatures = 0
    for record in records:
        by_keyword.setdefault(record[0], record[1:])
        if record[0] == "NEWSIG":
            signatures += 1
    if signatures > 1:
        raise Stalled(
            Reason.INVALID_SIGNATURE, f"commit {_short(commit)} carries more than one OpenPGP signature"
        )
    valid = by_keyword.get("VALIDSIG")
    primary = None
    if valid:
        primary = (
            valid[_VALIDSIG_PRIMARY_FIELD - 1] if len(valid) >= _VALIDSIG_PRIMARY_FIELD else valid[0]
        ).upper()
    key_text = f"key {primary}" if primary else "its key"
    if "REVKEYSIG" in by_keyword:
        raise Stalled(
            Reason.REVOKED_KEY, f"commit {_short(commit)} is signed with {key_text}, which is revoked"
        )
    if "EXPKEYSIG" in by_keyword:
        raise Stalled(
            Reason.EXPIRED_KEY, f"commit {_short(commit)} is signed with {key_text}, which has expired"
        )
    if "BADSIG" in by_keyword or "EXPSIG" in by_keyword:
        raise Stalled(
            Reason.INVALID_SIGNATURE,
            f"commit {_short(commit)} has an OpenPGP signature that does not match its content",
        )
    if "ERRSIG" in by_keyword:
        fields = by_keyword["ERRSIG"]
        key_id = fields[0] if fields else "?"
        if (len(fields) >= 6 and fields[5] == _ERRSIG_NO_PUBKEY) or "NO_PUBKEY" in by_keyword:  # noqa: PLR2004
            raise Stalled(
                Reason.UNTRUSTED_SIGNER,
                f"commit {_short(commit)} is signed by OpenPGP key {key_id}, which is not a trusted key",
            )
        raise Stalled(Reason.INVALID_SIGNATURE, f"commit {_short(commit)}: gpg cannot check the signature")
    if "GOODSIG" not in by_keyword or primary is None or valid is None:
        raise Stalled(Reason.INVALID_SIGNATURE, f"commit {_short(commit)}: gpg reported no valid signature")
    if primary not in trusted:
        raise Stalled(
            Reason.UNTRUSTED_SIGNER,
            f"commit {_short(commit)} is signed by OpenPGP key {primary}, which is not a trusted key",
        )
    subkey = valid[0].upper()
    return Signer(
        format=SignatureFormat.OPENPGP,
        fingerprint=primary,
        identity=" ".join(by_keyword["GOODSIG"][1:]),
        subkey=subkey if subkey != primary else None,
    )


def parse_ssh_time(text: str) -> dt.datetime:
    """Parse an allowed-signers time (``YYYYMMDD[HHMM[SS]][Z]``); times without Z are taken as UTC."""
    digits = text.rstrip("Zz")
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if len(digits) not in formats or not digits.isdigit():
        raise ValueError(f"not an allowed-signers time: {text!r}")
    return dt.datetime.strptime(digits, formats[len(digits)]).replace(tzinfo=dt.UTC)


def decide_ssh(
    fingerprint: str,
    *,
    signers: Iterable[AllowedSigner],
    revoked: Iterable[str],
    now: dt.datetime,
    commit: str,
) -> AllowedSigner:
    """Find the allowed-signers entry for a cryptographically valid SSH signature, or refuse."""
    if fingerprint in set(revoked):
        raise Stalled(
            Reason.REVOKED_KEY,
            f"commit {_short(commit)} is signed with SSH key {fingerprint}, which is revoked",
        )
    matching = [s for s in signers if s.fingerprint == fingerprint]
    if not matching:
        raise Stalled(
            Reason.UNTRUSTED_SIGNER,
            f"commit {_short(commit)} is signed by SSH key {fingerprint}, which is not a trusted key",
        )
    expired = []
    for signer in matching:
        try:
            after = parse_ssh_time(signer.valid_after) if signer.valid_after else None
            before = parse_ssh_time(signer.valid_before) if signer.valid_before else None
        except ValueError:
            continue
        if (after is None or now >= after) and (before is None or now < before):
            return signer
        expired.append(signer)
    if expired:
        raise Stalled(
            Reason.EXPIRED_KEY,
            f"commit {_short(commit)} is signed with SSH key {fingerprint}, "
            "which is outside its validity period",
        )
    raise Stalled(Reason.UNTRUSTED_SIGNER, f"SSH key {fingerprint} has an unreadable validity period")


def check_fast_forward(*, last_applied: str | None, head: str, descends: bool) -> None:
    """Refuse a head that does not descend from the last applied revision (a rollback attack)."""
    if last_applied is None or last_applied == head or descends:
        return
    raise Stalled(
        Reason.NON_FAST_FORWARD,
        f"branch head {_short(head)} does not descend from the last applied revision {_short(last_applied)}; "
        "the branch was rewound or replaced. Roll back explicitly (spec.rollbackTo) if that is intended",
    )
