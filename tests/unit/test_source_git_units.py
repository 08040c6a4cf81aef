"""Pure parts of the git module: credentials never shown, messages scrubbed."""

from __future__ import annotations

import base64

from gitward.source.git import Credentials, scrub


def test_credentials_repr_hides_values():
    """repr (and so any log of the object) names which credentials exist, never their values."""
    creds = Credentials(
        username="deploy", password="hunter2-secret", ssh_identity="-----BEGIN OPENSSH PRIVATE KEY-----"
    )
    shown = repr(creds)
    assert "hunter2" not in shown
    assert "PRIVATE KEY" not in shown
    assert "password" in shown


def test_scrub_removes_secrets_and_their_encodings():
    """Passwords, tokens, the basic-auth encoding and each line of a key are replaced."""
    creds = Credentials(
        username="deploy",
        password="hunter2-secret",
        bearer_token="tok-abcdef123456",
        ssh_identity="-----BEGIN KEY-----\nAAAAline-of-key-material\n-----END KEY-----",
    )
    basic = base64.b64encode(b"deploy:hunter2-secret").decode()
    text = f"auth {basic} failed for hunter2-secret with tok-abcdef123456; key AAAAline-of-key-material"
    cleaned = scrub(text, creds.sensitive_values())
    for secret in ("hunter2-secret", basic, "tok-abcdef123456", "AAAAline-of-key-material"):
        assert secret not in cleaned


def test_secret_data_keys_follow_flux():
    """username/password, bearerToken, identity, known_hosts and ca.crt are read from the Secret."""
    creds = Credentials.from_secret_data(
        {
            "username": b"u",
            "password": b"p",
            "identity": b"k",
            "known_hosts": b"h",
            "ca.crt": b"c",
            "bearerToken": b"t",
        }
    )
    assert (creds.username, creds.password, creds.ssh_identity, creds.known_hosts, creds.ca_cert, creds.bearer_token) == (
        "u", "p", "k", "h", "c", "t"
    )  # fmt: skip
