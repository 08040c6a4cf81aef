"""Commit objects as bytes: what was signed, and the signature over it.

A signature covers the commit object exactly as stored, minus the
signature header itself; re-encoding through a library that decodes text
leniently would verify something other than what git hashed. So the raw
object is parsed here, byte for byte, the way ``git verify-commit`` does.
Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

_SIGNATURE_HEADERS = (b"gpgsig", b"gpgsig-sha256")


class SignatureFormat(enum.StrEnum):
    """The kinds of signature git can put on a commit."""

    OPENPGP = "openpgp"
    SSH = "ssh"
    X509 = "x509"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CommitObject:
    """One commit, with the exact bytes its signature covers."""

    sha: str
    tree: str
    parents: tuple[str, ...]
    author: str
    committer: str
    message: str
    signature: bytes | None
    signed_payload: bytes

    @property
    def signature_format(self) -> SignatureFormat | None:
        """Which verifier this signature needs (None when unsigned)."""
        if self.signature is None:
            return None
        if self.signature.startswith(b"-----BEGIN PGP SIGNATURE-----"):
            return SignatureFormat.OPENPGP
        if self.signature.startswith(b"-----BEGIN SSH SIGNATURE-----"):
            return SignatureFormat.SSH
        if self.signature.startswith(b"-----BEGIN SIGNED MESSAGE-----"):
            return SignatureFormat.X509
        return SignatureFormat.UNKNOWN

    @property
    def author_name(self) -> str:
        """``Name <email>`` without the timestamp."""
        name, _, _ = self.author.rpartition(">")
        return f"{name}>" if name else self.author

    @property
    def subject(self) -> str:
        """The first line of the message."""
        return self.message.split("\n", 1)[0]


def parse_commit(sha: str, raw: bytes) -> CommitObject:
    """Split a raw commit object into headers, signature, payload and message.

    As in git, every signature header is left out of the signed payload,
    and the signature is the header for the repository's hash algorithm
    (``gpgsig`` for SHA-1 ids, ``gpgsig-sha256`` for SHA-256 ids).
    """
    wanted = b"gpgsig-sha256" if len(sha) == 64 else b"gpgsig"  # noqa: PLR2004 - SHA-256 hex length
    header_block, separator, message = raw.partition(b"\n\n")
    kept: list[bytes] = []
    headers: dict[bytes, list[bytes]] = {}
    signatures: dict[bytes, list[bytes]] = {}
    current = b""
    for line in header_block.split(b"\n"):
        if line.startswith(b" ") and current:
            if current in _SIGNATURE_HEADERS:
                signatures[current].append(line[1:])
            else:
                headers[current][-1] += b"\n" + line[1:]
                kept.append(line)
            continue
        current, _, value = line.partition(b" ")
        if current in _SIGNATURE_HEADERS:
            signatures.setdefault(current, []).append(value)
        else:
            headers.setdefault(current, []).append(value)
            kept.append(line)
    signature_lines = signatures.get(wanted)
    signature = b"\n".join(signature_lines) + b"\n" if signature_lines else None

    def first(key: bytes) -> str:
        return (headers.get(key) or [b""])[0].decode(errors="replace")

    return CommitObject(
        sha=sha,
        tree=first(b"tree"),
        parents=tuple(p.decode() for p in headers.get(b"parent", [])),
        author=first(b"author"),
        committer=first(b"committer"),
        message=message.decode(errors="replace"),
        signature=signature,
        signed_payload=b"\n".join(kept) + separator + message,
    )
