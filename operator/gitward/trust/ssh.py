"""SSH signature verification with a real ssh-keygen, against the tenant's allowed signers.

Three steps, so each failure gets its own reason: ``check-novalidate``
proves the signature matches the commit (else ``InvalidSignature``) and
names the key; :func:`~gitward.trust.decide.decide_ssh` decides whether that
key is trusted, revoked or outside its validity period, now (never at the
commit's own, forgeable, timestamp); and ``verify`` against the
allowed-signers file confirms it the way ``git verify-commit`` would.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.source.commits import CommitObject, SignatureFormat
from gitward.trust.decide import Signer, decide_ssh
from gitward.trust.keys import TrustedKeys
from gitward.trust.tools import ThrowawayHome, clean_environment, run_tool

NAMESPACE = "git"
_GOOD = re.compile(r'Good "git" signature (?:for \S+ )?with \S+ key (SHA256:[A-Za-z0-9+/]+)')


class SSHVerifier(ThrowawayHome):
    """Holds the allowed-signers file for one verification run."""

    prefix = "gitward-ssh-"

    def __init__(self, keys: TrustedKeys, *, timeout: float = 30.0, ssh_keygen: str = "ssh-keygen") -> None:
        super().__init__()
        self.keys = keys
        self.signers = keys.ssh_signers
        self.timeout = timeout
        self.ssh_keygen = ssh_keygen

    def prepare(self, home: Path) -> None:
        """Write the tenant's allowed-signers file."""
        (home / "allowed_signers").write_text(self.keys.allowed_signers)

    def _keygen(self, *args: str, payload: bytes | None = None) -> tuple[int, str]:
        result = run_tool(
            [self.ssh_keygen, *args],
            env=clean_environment(self.require_home()),
            timeout=self.timeout,
            stdin=payload,
        )
        return result.code, (result.stdout + result.stderr).strip()

    def verify(self, commit: CommitObject, *, now: dt.datetime | None = None) -> Signer:
        """Verify one commit's SSH signature; refuse with the reason that fits."""
        home = self.require_home()
        if not self.signers:
            raise Stalled(
                Reason.UNTRUSTED_SIGNER,
                f"commit {commit.sha[:12]} is SSH-signed, but the tenant trusts no SSH key",
            )
        signature = home / "commit.sig"
        signature.write_bytes(commit.signature or b"")
        code, output = self._keygen(
            "-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(signature), payload=commit.signed_payload
        )
        match = _GOOD.search(output)
        if code != 0 or match is None:
            raise Stalled(
                Reason.INVALID_SIGNATURE,
                f"commit {commit.sha[:12]} has an SSH signature that does not match its content",
            )
        fingerprint = match.group(1)
        entry = decide_ssh(
            fingerprint,
            signers=self.signers,
            revoked=self.keys.revoked_ssh_fingerprints,
            now=now or dt.datetime.now(dt.UTC),
            commit=commit.sha,
        )
        allowed = str(home / "allowed_signers")
        code, output = self._keygen("-Y", "find-principals", "-f", allowed, "-s", str(signature))
        principal = output.splitlines()[0].strip() if code == 0 and output else entry.principals
        code, output = self._keygen(
            "-Y", "verify", "-f", allowed, "-I", principal, "-n", NAMESPACE, "-s", str(signature),
            payload=commit.signed_payload,
        )  # fmt: skip
        if code != 0:
            raise Stalled(
                Reason.INVALID_SIGNATURE,
                f"commit {commit.sha[:12]}: ssh-keygen refused the signature of key {fingerprint}",
            )
        return Signer(format=SignatureFormat.SSH, fingerprint=fingerprint, identity=principal)
