"""Credentials for a git server, from the app's Secret, and scrubbing them out of every message.

Values reach git only through the runner's environment and throwaway files
(``source.runner``), never argv or the URL; ``repr`` never shows them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """How to authenticate to the git server, from the app's ``secretRef`` Secret.

    Keys (as in Flux): ``username`` + ``password`` (HTTPS basic auth),
    ``bearerToken`` (HTTPS), ``identity`` + ``known_hosts`` (SSH), and
    optionally ``ca.crt`` (a CA bundle for HTTPS). ``repr`` never shows values.
    """

    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ssh_identity: str | None = None
    known_hosts: str | None = None
    ca_cert: str | None = None

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes]) -> Credentials:
        """Build from a Secret's decoded ``data``."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return value.decode() if value else None

        return cls(
            username=text("username"),
            password=text("password"),
            bearer_token=text("bearerToken"),
            ssh_identity=text("identity"),
            known_hosts=text("known_hosts"),
            ca_cert=text("ca.crt"),
        )

    def sensitive_values(self) -> list[str]:
        """Every string that must never appear in a message, including encoded forms."""
        values = [v for v in (self.password, self.bearer_token, self.ssh_identity) if v]
        if self.username and self.password:
            values.append(base64.b64encode(f"{self.username}:{self.password}".encode()).decode())
        return values

    def __repr__(self) -> str:
        present = [
            name for name in ("username", "password", "bearer_token", "ssh_identity") if getattr(self, name)
        ]
        return f"Credentials({', '.join(present) or 'none'})"


def scrub(text: str, sensitive: Sequence[str]) -> str:
    """Replace every sensitive value (and each line of a multi-line one) with ``***``."""
    for value in sorted(sensitive, key=len, reverse=True):
        for piece in [value, *[line for line in value.splitlines() if len(line) >= 8]]:  # noqa: PLR2004
            text = text.replace(piece, "***")
    return text
