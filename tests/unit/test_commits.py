"""Commit objects: the signed payload is the object minus its signature header, byte for byte."""

from __future__ import annotations

from gitward.source.commits import SignatureFormat, parse_commit

SIGNED = (
    b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
    b"parent 1111111111111111111111111111111111111111\n"
    b"parent 2222222222222222222222222222222222222222\n"
    b"author Dev One <dev@example.com> 1795000000 +0000\n"
    b"committer Dev One <dev@example.com> 1795000000 +0000\n"
    b"gpgsig -----BEGIN SSH SIGNATURE-----\n"
    b" U1NIU0lHAAAAAQ==\n"
    b" -----END SSH SIGNATURE-----\n"
    b"\n"
    b"merge: bring in feature\n\nbody line\n"
)


def test_signature_is_cut_out_and_payload_kept_exact():
    """The payload is every other byte of the object; parents, author and subject are parsed."""
    commit = parse_commit("a" * 40, SIGNED)
    assert (
        commit.signature == b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----\n"
    )
    assert commit.signature_format is SignatureFormat.SSH
    assert b"gpgsig" not in commit.signed_payload
    assert commit.signed_payload.endswith(b"\n\nmerge: bring in feature\n\nbody line\n")
    assert commit.signed_payload.startswith(b"tree 4b825dc6")
    assert commit.parents == ("1" * 40, "2" * 40)
    assert commit.author_name == "Dev One <dev@example.com>"
    assert commit.subject == "merge: bring in feature"


def test_unsigned_commit_has_no_signature():
    """Without a gpgsig header there is nothing to verify, and the payload is the whole object."""
    raw = SIGNED.replace(
        b"gpgsig -----BEGIN SSH SIGNATURE-----\n U1NIU0lHAAAAAQ==\n -----END SSH SIGNATURE-----\n", b""
    )
    commit = parse_commit("a" * 40, raw)
    assert commit.signature is None
    assert commit.signature_format is None
    assert commit.signed_payload == raw


def test_sha256_repositories_use_their_own_header():
    """A SHA-256 commit id takes gpgsig-sha256; both signature headers leave the payload."""
    raw = SIGNED.replace(b"gpgsig ", b"gpgsig-sha256 ")
    raw = raw.replace(
        b"\n\nmerge", b"\ngpgsig -----BEGIN PGP SIGNATURE-----\n xx\n -----END PGP SIGNATURE-----\n\nmerge"
    )
    commit = parse_commit("b" * 64, raw)
    assert commit.signature_format is SignatureFormat.SSH
    assert b"gpgsig" not in commit.signed_payload
