"""The keys a tenant trusts, gathered from its ``trust.keysFrom`` ConfigMaps.

In each ConfigMap, every key ending in ``.asc`` is an armored OpenPGP
public key (or several); the key ``allowed_signers`` is an SSH
allowed-signers file (git's ``gpg.ssh.allowedSignersFile`` format); the
optional key ``revoked_signers`` lists SSH public keys that are revoked.
Pure: parsing only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_KEY_TYPES = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com|ssh-dss)$"
)


@dataclass(frozen=True, slots=True)
class AllowedSigner:
    """One line of an allowed-signers file."""

    principals: str
    options: Mapping[str, str]
    key_type: str
    key_blob: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:`` fingerprint of the key."""
        return ssh_fingerprint(self.key_blob)

    @property
    def valid_after(self) -> str | None:
        """``valid-after`` option as written (YYYYMMDD[HHMM[SS]][Z])."""
        return self.options.get("valid-after")

    @property
    def valid_before(self) -> str | None:
        """``valid-before`` option as written."""
        return self.options.get("valid-before")


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """Everything a tenant trusts, ready for the verifiers."""

    openpgp: tuple[str, ...] = ()
    allowed_signers: str = ""
    revoked_ssh_fingerprints: frozenset[str] = frozenset()

    @property
    def ssh_signers(self) -> tuple[AllowedSigner, ...]:
        """The parsed allowed-signers lines."""
        return parse_allowed_signers(self.allowed_signers)

    @property
    def empty(self) -> bool:
        """No key at all: nothing can be verified."""
        return not self.openpgp and not self.ssh_signers


def ssh_fingerprint(key_blob: str) -> str:
    """``SHA256:<base64, unpadded>`` of a base64 public key blob, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(base64.b64decode(key_blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _split_options(text: str) -> tuple[dict[str, str], str]:
    """Split a leading ``opt,opt="x,y"`` options field off an allowed-signers remainder."""
    options: dict[str, str] = {}
    index = 0
    while index < len(text) and not text[index].isspace():
        match = re.match(r'([A-Za-z-]+)(?:="((?:[^"\\]|\\.)*)")?,?', text[index:])
        if not match or not match.group(0):
            break
        options[match.group(1).lower()] = match.group(2) or ""
        index += match.end()
    return options, text[index:].lstrip()


def parse_allowed_signers(text: str) -> tuple[AllowedSigner, ...]:
    """Parse an allowed-signers file; malformed lines are skipped (ssh-keygen ignores them too)."""
    signers = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        principals, _, rest = line.partition(" ")
        rest = rest.lstrip()
        options: dict[str, str] = {}
        if rest and not _KEY_TYPES.match(rest.split(None, 1)[0]):
            options, rest = _split_options(rest)
        fields = rest.split()
        if len(fields) < 2 or not _KEY_TYPES.match(fields[0]):  # noqa: PLR2004 - type and blob
            continue
        try:
            base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            continue
        signers.append(AllowedSigner(principals, options, fields[0], fields[1]))
    return tuple(signers)


def _revoked_fingerprints(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        fields = line.split()
        for index, item in enumerate(fields[:-1]):
            if _KEY_TYPES.match(item):
                with contextlib.suppress(binascii.Error, ValueError):
                    found.add(ssh_fingerprint(fields[index + 1]))
                break
    return found


def from_config_maps(config_maps: Iterable[Mapping[str, str]]) -> TrustedKeys:
    """Gather the trusted keys from the data of the tenant's ConfigMaps, in order."""
    openpgp: list[str] = []
    signers: list[str] = []
    revoked: set[str] = set()
    for data in config_maps:
        for name in sorted(data):
            value = data[name]
            if name.endswith(".asc"):
                openpgp.append(value)
            elif name == "allowed_signers":
                signers.append(value.rstrip("\n"))
            elif name == "revoked_signers":
                revoked |= _revoked_fingerprints(value)
    allowed = "\n".join(signers) + ("\n" if signers else "")
    return TrustedKeys(tuple(openpgp), allowed, frozenset(revoked))
