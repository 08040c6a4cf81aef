"""Trusted keys gathered from ConfigMaps."""

from __future__ import annotations

from gitward.trust.keys import from_config_maps, parse_allowed_signers, ssh_fingerprint

BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIJ1IqlGKcFd3o4pJ8o3oP0bsZJXHY6hSjVbHqWnYkDxr"


def test_config_maps_split_into_openpgp_ssh_and_revoked():
    """`.asc` keys are OpenPGP, `allowed_signers` is SSH, `revoked_signers` revokes; other keys are ignored."""
    keys = from_config_maps(
        [
            {"alice.asc": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n...", "README": "ignored"},
            {
                "allowed_signers": f"dev@example.com ssh-ed25519 {BLOB}",
                "revoked_signers": f"ssh-ed25519 {BLOB} old",
            },
        ]
    )
    assert keys.openpgp == ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n...",)
    assert [s.principals for s in keys.ssh_signers] == ["dev@example.com"]
    assert keys.revoked_ssh_fingerprints == {ssh_fingerprint(BLOB)}
    assert not keys.empty
    assert from_config_maps([{"README": "x"}]).empty


def test_allowed_signers_parsing_skips_junk_and_keeps_options():
    """Comments, blank and malformed lines are skipped; quoted options with commas survive."""
    parsed = parse_allowed_signers(
        "\n".join(
            [
                "# comment",
                "",
                f'a@x,b@x namespaces="git,file",valid-before="20300101" ssh-ed25519 {BLOB} laptop',
                "broken line",
                "c@x ssh-ed25519 not-base64!!",
            ]
        )
    )
    assert len(parsed) == 1
    assert parsed[0].principals == "a@x,b@x"
    assert parsed[0].options == {"namespaces": "git,file", "valid-before": "20300101"}
    assert parsed[0].fingerprint.startswith("SHA256:")
