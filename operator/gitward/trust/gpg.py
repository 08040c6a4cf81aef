"""OpenPGP verification with a real gpg, in a keyring holding only the tenant's keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.source.commits import CommitObject
from gitward.trust.decide import Signer, decide_openpgp
from gitward.trust.tools import ThrowawayHome, ToolResult, clean_environment, run_tool

MAX_KEY_BYTES = 1 << 20
_COMMON = (
    "--batch",
    "--no-tty",
    "--no-autostart",
    "--no-auto-key-retrieve",
    "--no-auto-key-locate",
    "--quiet",
)


class OpenPGPVerifier(ThrowawayHome):
    """Imports the trusted keys once, then verifies any number of commit signatures."""

    prefix = "gitward-gpg-"

    def __init__(self, armored_keys: Sequence[str], *, timeout: float = 30.0, gpg: str = "gpg") -> None:
        super().__init__()
        self.armored_keys = armored_keys
        self.timeout = timeout
        self.gpg = gpg
        self.trusted_primaries: frozenset[str] = frozenset()

    def prepare(self, home: Path) -> None:  # noqa: ARG002 - gpg reaches the home through _gpg
        """Import the tenant's keys into the fresh keyring and note their primary fingerprints."""
        material = "\n".join(self.armored_keys).encode()
        if len(material) > MAX_KEY_BYTES:
            raise Stalled(Reason.UNTRUSTED_SIGNER, "the tenant's OpenPGP keys exceed 1 MiB")
        if material.strip():
            imported = self._gpg(["--import-options", "import-minimal", "--import"], stdin=material)
            if imported.code != 0:
                raise Stalled(Reason.UNTRUSTED_SIGNER, "the tenant's OpenPGP keys could not be imported")
            self.trusted_primaries = self._primary_fingerprints()

    def _gpg(self, args: Sequence[str], *, stdin: bytes | None = None) -> ToolResult:
        home = self.require_home()
        return run_tool(
            [self.gpg, "--homedir", str(home), *_COMMON, *args],
            env=clean_environment(home),
            timeout=self.timeout,
            stdin=stdin,
        )

    def _primary_fingerprints(self) -> frozenset[str]:
        listing = self._gpg(["--with-colons", "--fixed-list-mode", "--list-keys"]).stdout
        primaries = set()
        expect_primary_fpr = False
        for line in listing.splitlines():
            fields = line.split(":")
            if fields[0] == "pub":
                expect_primary_fpr = True
            elif fields[0] == "fpr" and expect_primary_fpr:
                primaries.add(fields[9].upper())
                expect_primary_fpr = False
            elif fields[0] in {"sub", "uid"}:
                expect_primary_fpr = False
        return frozenset(primaries)

    def verify(self, commit: CommitObject) -> Signer:
        """Verify one commit's OpenPGP signature against the trusted keys only."""
        home = self.require_home()
        if not self.trusted_primaries:
            raise Stalled(
                Reason.UNTRUSTED_SIGNER,
                f"commit {commit.sha[:12]} is OpenPGP-signed, but the tenant trusts no OpenPGP key",
            )
        signature = home / "commit.sig"
        payload = home / "commit.payload"
        signature.write_bytes(commit.signature or b"")
        payload.write_bytes(commit.signed_payload)
        # gpg's exit code is not the verdict (an expired key's signature exits 0): the status lines are.
        status = self._gpg(["--status-fd", "1", "--verify", str(signature), str(payload)]).stdout
        return decide_openpgp(status, trusted_primaries=self.trusted_primaries, commit=commit.sha)
