"""SOPS-encrypted manifests, decrypted after render with the tenant's age identities and nothing else.

Why this exists: teams keep Secrets in Git encrypted with SOPS, the way Flux's
kustomize-controller reads them, and must be able to move a repository between
Flux and gitward unchanged. As in Flux, decryption happens after render (after
``kustomize build``), object by object: every rendered object with a top-level
``sops`` mapping is encrypted, and is replaced by what the real ``sops`` binary
decrypts from it, without its ``sops`` key.

What a tenant's file may make gitward do is narrow:

- Before sops runs at all, :func:`metadata_problem` reads the object's ``sops``
  metadata (pure): only ``age`` recipients may be present. Any AWS KMS, GCP
  KMS, Huawei Cloud KMS, Azure Key Vault, HashiCorp Vault or PGP entry, a key
  group holding one, or any field sops does not define (a ``keyservice``, say)
  is refused as ``DecryptionFailed``: sops would otherwise contact an endpoint
  the tenant's file names (a server-side request from inside the cluster) or
  wait for a gpg agent, on the tenant's say-so. The tenant's own recipients
  must be among the file's (in enough key groups for a Shamir split), or the
  refusal says which recipients the file was encrypted for.
- The identities reach sops only through ``SOPS_AGE_KEY`` in its environment
  (never argv, never a file), re-serialized from the X25519 identities
  :class:`AgeIdentities` parsed, so no plugin or SSH identity can slip through.
  The environment is otherwise empty: ``HOME`` and ``XDG_CONFIG_HOME`` are an
  empty private directory (no ``~/.config/sops/age/keys.txt``, no
  ``~/.ssh/id_ed25519``), ``PATH`` an empty directory (no age plugin, no gpg),
  an empty ``--config`` (no ``.sops.yaml`` found by walking up from the working
  directory), every proxy a closed port, no cloud or Vault credentials, no
  ``SOPS_KEYSERVICE``.
- sops runs through :func:`gitward.processes.run` (its own process group, a
  wall-clock deadline shared by every object of one render, an output cap, and
  OS limits on memory, CPU and file writes), with the render budgets of
  :class:`~gitward.render.limits.Limits` that bound kustomize.

Errors list every failing object together (``Kind/name (file#document)``) with a
fixed description of the cause chosen from sops' exit, never sops' stderr as it
is and never a decrypted value. Nothing here logs.

How an object reaches sops (all of it checked against the real sops): as a YAML
document on stdin. sops' MAC hashes every value in document order (comments
excepted), so what sops reads must hold the values it hashed when it
encrypted, in the same order and of the same types:

- Plain YAML (``verify_mac=True``): the parsed object written back as a YAML
  flow document (keys in order, strings with YAML's own escapes, numbers and
  booleans as JSON writes them) keeps the MAC for sops-written files, with
  comments, ``data`` and ``stringData``, ints, bools, floats and lists. The
  documents of a multi-document sops file share one MAC and go to sops
  together. Comments are lost in that form, so a file whose encryption rule is
  a comment (``encrypted_comment_regex``, ``unencrypted_comment_regex``) needs
  its text as written: ``sources`` gives it, and without it such a file is
  refused with that explanation.
- After ``kustomize build`` (``verify_mac=False``): kustomize rewrites every
  object (it sorts keys, and sets namespaces, prefixes and labels), so the MAC
  cannot hold, and Flux does not check it either. Each value still carries its
  own AES-GCM tag, bound to its path, so a changed or moved ciphertext is
  refused; the file as a whole is vouched for by the commit's signature, which
  gitward verified before rendering.

Decrypted objects are marked :attr:`Manifest.decrypted` only when every value
under their ``data`` and ``stringData`` was ciphertext in the commit, so a file
that carries ``sops`` metadata but leaves a Secret's values in the clear still
meets the policy's plaintext-Secret rule.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import yaml

from gitward import processes
from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render import programs
from gitward.render.limits import Limits
from gitward.render.manifests import Manifest
from gitward.render.yamlsafe import load_documents

AGE_KEY_SUFFIX: Final = ".agekey"
DEFAULT_SOPS: Final = ("sops",)
SOPS_KEY: Final = "sops"

# Key sources sops would reach out to, by the name of their list in the metadata.
FORBIDDEN_SOURCES: Final = {
    "kms": "AWS KMS",
    "gcp_kms": "GCP KMS",
    "hckms": "Huawei Cloud KMS",
    "azure_kv": "Azure Key Vault",
    "hc_vault": "HashiCorp Vault",
    "pgp": "PGP",
}
# Every other field sops v3 writes (stores.metadata); anything else is refused, not guessed at.
_KNOWN_FIELDS: Final = frozenset(
    {
        "age",
        "key_groups",
        "shamir_threshold",
        "lastmodified",
        "mac",
        "version",
        "unencrypted_suffix",
        "encrypted_suffix",
        "unencrypted_regex",
        "encrypted_regex",
        "unencrypted_comment_regex",
        "encrypted_comment_regex",
        "mac_only_encrypted",
        *FORBIDDEN_SOURCES,
    }
)
_GROUP_FIELDS: Final = frozenset({"age", *FORBIDDEN_SOURCES})
_AGE_FIELDS: Final = frozenset({"recipient", "enc"})

_IDENTITY_HRP: Final = "age-secret-key-"
_RECIPIENT_HRP: Final = "age"
_BECH32: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GENERATOR: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_KEY_BYTES: Final = 32
_CHECKSUM_CHARS: Final = 6

# sops' ciphertext for one value: ENC[AES256_GCM,data:...,iv:...,tag:...,type:str]
_CIPHERTEXT: Final = re.compile(
    r"ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,type:[a-z]+\]"
)
_SHOWN_RECIPIENTS: Final = 4
_SHOWN_FAILURES: Final = 8
_CLIP: Final = 72


class _IdentityError(ValueError):
    """Why a line is not an X25519 age identity (never the line itself)."""


# ---------------------------------------------------------------------------------------------------------
# age keys: bech32 (BIP 173, as age uses it, without the 90-character limit) and X25519 (RFC 7748)


def _polymod(values: Iterable[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_BECH32_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], source: int, target: int, *, pad: bool) -> list[int]:
    accumulator, bits, out = 0, 0, []
    mask = (1 << target) - 1
    for value in data:
        accumulator = (accumulator << source) | value
        bits += source
        while bits >= target:
            bits -= target
            out.append((accumulator >> bits) & mask)
    if pad and bits:
        out.append((accumulator << (target - bits)) & mask)
    elif not pad and (bits >= source or (accumulator << (target - bits)) & mask):
        raise _IdentityError("its bech32 padding is invalid")
    return out


def bech32_encode(hrp: str, payload: bytes) -> str:
    """``hrp1...`` in lower case: how age writes a recipient."""
    data = _convert_bits(payload, 8, 5, pad=True)
    checksum = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    data += [(checksum >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_CHARS)]
    return hrp + "1" + "".join(_BECH32[d] for d in data)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """``(hrp, payload)`` of a bech32 string in one case; :class:`ValueError` if it is not one."""
    if text.lower() != text and text.upper() != text:
        raise _IdentityError("it mixes upper and lower case")
    lowered = text.lower()
    separator = lowered.rfind("1")
    if separator < 1 or len(lowered) - separator - 1 < _CHECKSUM_CHARS:
        raise _IdentityError("it is not bech32")
    hrp, rest = lowered[:separator], lowered[separator + 1 :]
    if any(not 33 <= ord(c) <= 126 for c in hrp) or any(c not in _BECH32 for c in rest):  # noqa: PLR2004
        raise _IdentityError("it holds characters bech32 does not use")
    data = [_BECH32.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *data]) != 1:
        raise _IdentityError("its bech32 checksum is wrong")
    return hrp, bytes(_convert_bits(data[:-_CHECKSUM_CHARS], 5, 8, pad=False))


_P: Final = 2**255 - 19
_A24: Final = 121665


def x25519(scalar: bytes, point: bytes) -> bytes:
    """RFC 7748's X25519 function (the Montgomery ladder, on Python integers)."""
    clamped = bytearray(scalar)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    k = int.from_bytes(clamped, "little")
    x1 = int.from_bytes(point, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = x2 + z2, x2 - z2
        aa, bb = a * a % _P, b * b % _P
        e = aa - bb
        c, d = x3 + z3, x3 - z3
        da, cb = d * a % _P, c * b % _P
        x3, z3 = (da + cb) ** 2 % _P, x1 * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(_KEY_BYTES, "little")


def recipient_of(identity: str) -> str:
    """The ``age1...`` recipient of an ``AGE-SECRET-KEY-1...`` identity, as ``age-keygen -y`` prints it."""
    hrp, secret = bech32_decode(identity)
    if hrp != _IDENTITY_HRP or identity != identity.upper():
        raise _IdentityError("it is not an AGE-SECRET-KEY-1 identity")
    if len(secret) != _KEY_BYTES:
        raise _IdentityError(f"its key is {len(secret)} bytes, not {_KEY_BYTES}")
    return bech32_encode(_RECIPIENT_HRP, x25519(secret, (9).to_bytes(_KEY_BYTES, "little")))


def _line_problem(line: str) -> str:
    """Why a non-comment line of a ``.agekey`` value is refused, without quoting it."""
    if line.startswith("AGE-PLUGIN-"):
        return "is an age plugin identity; gitward runs no age plugins (use an X25519 AGE-SECRET-KEY-1 key)"
    if line.startswith("AGE-SECRET-KEY-PQ-"):
        return "is a post-quantum hybrid identity, which gitward does not support yet (use AGE-SECRET-KEY-1)"
    if line.startswith(("-----BEGIN", "ssh-")):
        return "is an SSH key; gitward decrypts only with X25519 age identities (AGE-SECRET-KEY-1...)"
    return "is not an age identity (AGE-SECRET-KEY-1...)"


@dataclass(frozen=True, slots=True)
class AgeIdentities:
    """The X25519 age identities of one tenant's decryption Secret, and the recipients they decrypt for.

    Built by :meth:`from_secret_data`. The identities themselves appear in no
    ``repr``, ``str`` or message; only :meth:`environment_value` hands them out,
    for sops' environment. The recipients are computed here, in Python (RFC 7748
    X25519 and age's bech32, checked against ``age-keygen -y`` in the tests): no
    new dependency, and no program to hand a key to. The arithmetic is not
    constant-time; it runs once per Secret read, on the operator's own CPU, where
    nobody outside can time it.
    """

    secret: str  # the Secret's name, for messages
    recipients: tuple[str, ...]  # age1..., in the order the identities were found
    keys: tuple[str, ...]  # the Secret's data keys they came from
    _identities: tuple[str, ...] = field(repr=False, compare=False)

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes], *, secret: str) -> AgeIdentities:
        """Parse every ``*.agekey`` entry of a Secret's decoded ``data`` (as in Flux).

        Each value holds one or more identities, one a line, with ``#`` comment
        lines (``age-keygen`` writes ``# created: ...`` and ``# public key: ...``)
        and blank lines ignored. A value with no identity, or with a line that is
        not an X25519 identity, is ``Stalled``/``DecryptionFailed`` naming the
        data key and the line number, never the value.
        """
        identities: dict[str, str] = {}  # identity -> recipient, in the order found
        keys: list[str] = []
        for key in sorted(k for k in data if k.endswith(AGE_KEY_SUFFIX)):
            where = f"Secret {secret!r} key {key!r}"
            try:
                text = data[key].decode("utf-8")
            except UnicodeDecodeError:
                raise Stalled(Reason.DECRYPTION_FAILED, f"{where} is not UTF-8 text") from None
            found = 0
            for number, raw in enumerate(text.splitlines(), start=1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    identities[line] = recipient_of(line)
                except _IdentityError as error:
                    problem = (
                        _line_problem(line)
                        if not line.startswith("AGE-SECRET-KEY-1")
                        else f"is not a valid identity: {error}"
                    )
                    raise Stalled(Reason.DECRYPTION_FAILED, f"{where}, line {number}: {problem}") from None
                found += 1
            if not found:
                raise Stalled(
                    Reason.DECRYPTION_FAILED,
                    f"{where} holds no age identity (expected AGE-SECRET-KEY-1... lines, "
                    "as age-keygen writes them)",
                )
            keys.append(key)
        if not identities:
            raise Stalled(
                Reason.DECRYPTION_FAILED,
                f"Secret {secret!r} has no '*{AGE_KEY_SUFFIX}' entry: put each age identity under a data key "
                f"ending in {AGE_KEY_SUFFIX} (as Flux reads it)",
            )
        return cls(
            secret=secret,
            recipients=tuple(dict.fromkeys(identities.values())),
            keys=tuple(keys),
            _identities=tuple(identities),
        )

    def environment_value(self) -> str:
        """The identities, one a line, for ``SOPS_AGE_KEY``: the only way they leave this object."""
        return "\n".join(self._identities) + "\n"

    def __repr__(self) -> str:
        return (
            f"AgeIdentities(secret={self.secret!r}, keys={list(self.keys)!r}, "
            f"recipients={list(self.recipients)!r})"
        )

    def __str__(self) -> str:
        return self.__repr__()


# ---------------------------------------------------------------------------------------------------------
# The pure pre-check of an object's sops metadata


def is_encrypted(obj: Mapping[str, Any]) -> bool:
    """Whether an object is SOPS-encrypted: a top-level ``sops`` key, neither null nor empty (as in Flux)."""
    value = obj.get(SOPS_KEY)
    return value is not None and value not in ({}, [], "")


def revealed(encrypted: Mapping[str, Any], decrypted: Mapping[str, Any]) -> set[str]:
    """Every value that was ciphertext in ``encrypted`` and is plaintext in ``decrypted``, whatever the kind.

    What must be masked wherever gitward shows text it did not write (a test Job's log tail).
    """
    found: set[str] = set()

    def walk(before: object, after: object) -> None:
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            for key, value in before.items():
                if key != SOPS_KEY and key in after:
                    walk(value, after[key])
        elif isinstance(before, list) and isinstance(after, list):
            for old, new in zip(before, after, strict=False):
                walk(old, new)
        elif (
            isinstance(before, str)
            and _CIPHERTEXT.fullmatch(before)
            and not isinstance(after, Mapping | list)
        ):
            found.add(str(after))

    walk(encrypted, decrypted)
    return found


def stray_ciphertext(manifests: Sequence[Manifest]) -> str:
    """The first object holding sops ciphertext without sops metadata ("" if none).

    Such values cannot be decrypted (an encrypted ``kind: List`` loses its metadata when its items
    are split out; a value may be pasted from another file) and must not reach the cluster as if
    they were the plaintext.
    """
    for manifest in manifests:
        if not is_encrypted(manifest.obj) and _still_encrypted(manifest.obj):
            return _describe(manifest)
    return ""


def _shown(value: object) -> str:
    """A tenant-written string, safe and short enough for a message."""
    text = "".join(c if unicodedata.category(c)[0] not in "CZ" or c == " " else "?" for c in str(value))
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."


def _listing(values: Sequence[str], limit: int = _SHOWN_RECIPIENTS) -> str:
    shown = ", ".join(_shown(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _non_empty(value: object) -> bool:
    return value not in (None, "", [], {})


def _age_recipients(value: object, *, where: str) -> tuple[list[str], str | None]:
    """The recipients of an ``age`` list, or why it is malformed."""
    if value is None:
        return [], None
    if not isinstance(value, list):
        return [], f"{where} is not a list"
    recipients = []
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            return [], f"{where}[{index}] is not a mapping"
        unknown = sorted(str(k) for k in entry if k not in _AGE_FIELDS)
        if unknown:
            return [], f"{where}[{index}] has fields sops does not define ({_listing(unknown)})"
        recipient, enc = entry.get("recipient"), entry.get("enc")
        if not isinstance(recipient, str) or not recipient or not isinstance(enc, str) or not enc:
            return [], f"{where}[{index}] needs a recipient and an enc string"
        recipients.append(recipient.strip())
    return recipients, None


def _sources(body: Mapping[Any, Any], *, where: str) -> list[str]:
    """The key sources (other than age) a metadata mapping or key group names."""
    return [
        f"{FORBIDDEN_SOURCES[name]} ({where}.{name})"
        for name in FORBIDDEN_SOURCES
        if _non_empty(body.get(name))
    ]


def _groups(metadata: Mapping[Any, Any]) -> tuple[list[list[str]], str | None]:
    """The age recipients of each key group, as sops forms them; or why they are malformed or forbidden."""
    forbidden = _sources(metadata, where="sops")
    top, problem = _age_recipients(metadata.get("age"), where="sops.age")
    if problem:
        return [], problem
    groups: list[list[str]] = []
    raw_groups = metadata.get("key_groups")
    if raw_groups is not None and not isinstance(raw_groups, list):
        return [], "sops.key_groups is not a list"
    for index, group in enumerate(raw_groups or []):
        where = f"sops.key_groups[{index}]"
        if not isinstance(group, Mapping):
            return [], f"{where} is not a mapping"
        unknown = sorted(str(k) for k in group if k not in _GROUP_FIELDS)
        if unknown:
            forbidden.append(f"fields sops does not define ({where}: {_listing(unknown)})")
        forbidden.extend(_sources(group, where=where))
        recipients, problem = _age_recipients(group.get("age"), where=f"{where}.age")
        if problem:
            return [], problem
        groups.append(recipients)
    if forbidden:
        return [], (
            f"it names key sources other than age: {_listing(forbidden)}; gitward decrypts only with the "
            "tenant's age key and never contacts a key service, so encrypt it for age recipients only"
        )
    # sops reads the top-level lists as one group when they hold any key, and key_groups otherwise.
    return ([top] if top else groups), None


def _form_problem(metadata: object) -> str | None:
    """Why ``metadata`` is not sops metadata gitward understands, whatever its keys."""
    if not isinstance(metadata, Mapping):
        return f"its sops metadata is a {type(metadata).__name__}, not a mapping"
    unknown = sorted(str(k) for k in metadata if k not in _KNOWN_FIELDS)
    if unknown:
        return (
            f"its sops metadata has fields sops does not define ({_listing(unknown)}); gitward decrypts "
            "only age-encrypted files whose metadata it fully understands"
        )
    if not isinstance(metadata.get("mac"), str) or not metadata.get("mac"):
        return "its sops metadata has no mac"
    return None


def _recipient_problem(
    groups: Sequence[Sequence[str]], threshold: object, recipients: Collection[str]
) -> str | None:
    everyone = list(dict.fromkeys(r for group in groups for r in group))
    if not everyone:
        return "it has no age recipient, so the tenant's key cannot decrypt it"
    ours = {r.lower() for r in recipients}
    opened = sum(1 for group in groups if any(r.lower() in ours for r in group))
    needed = 1
    if len(groups) > 1:
        needed = threshold if isinstance(threshold, int) and threshold > 0 else len(groups)
    if opened >= needed:
        return None
    tenant = f"the tenant's key ({_listing(sorted(recipients))})"
    if len(groups) > 1:
        return (
            f"it is split into {len(groups)} key groups, {needed} of which are needed, and {tenant} is in "
            f"{opened} of them (recipients: {_listing(everyone)})"
        )
    return f"it was encrypted for {_listing(everyone)}; {tenant} is not among them"


def metadata_problem(metadata: object, recipients: Collection[str]) -> str | None:
    """Why gitward refuses to run sops on an object with this ``sops`` metadata; None if it may.

    Pure. Refused: metadata that is not a mapping, has no ``mac``, or has a
    field sops does not define (a ``keyservice``, anything newer than this
    list); any non-age key source (``kms``, ``gcp_kms``, ``hckms``,
    ``azure_kv``, ``hc_vault``, ``pgp``) at the top or in a key group, even
    beside an age key; and files none of ``recipients`` can open (for a Shamir
    split: fewer key groups holding one of them than the threshold needs).
    The message names recipients (public keys), never anything else of the file.
    """
    problem = _form_problem(metadata)
    if problem or not isinstance(metadata, Mapping):
        return problem
    groups, problem = _groups(metadata)
    if problem:
        return problem
    return _recipient_problem(groups, metadata.get("shamir_threshold"), recipients)


# ---------------------------------------------------------------------------------------------------------
# What goes to sops


def _describe(manifest: Manifest) -> str:
    """``Kind/name (file#document)``, with sops ciphertext (an encrypted kind or name) shown as such."""

    def part(value: str) -> str:
        return "(encrypted)" if value.startswith("ENC[") else _shown(value)

    return f"{part(manifest.kind)}/{part(manifest.name)} ({manifest.origin})"


def _yaml_string(text: str) -> str:
    """A double-quoted YAML scalar of ``text``: printable ASCII as is, everything else escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in {'"', "\\"}:
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:  # noqa: PLR2004 - printable ASCII
            out.append(char)
        elif code <= 0xFF:  # noqa: PLR2004
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:  # noqa: PLR2004
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _flow(value: object) -> str:
    """JSON data as a YAML flow document that sops (go-yaml v3) reads back value for value, in order.

    JSON itself is almost that, but JSON escapes a character outside the BMP as a
    surrogate pair, which YAML refuses, and leaves U+2028 and friends raw, which
    YAML folds; so strings are written here with YAML's own escapes.
    """
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_yaml_string(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, str):
        return _yaml_string(value)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value, allow_nan=False)
    raise TypeError(f"not JSON data: {type(value).__name__}")


def _documents(text: str) -> list[str] | None:
    """Each document of a YAML stream as its own text, in load order; None if PyYAML cannot split it."""
    try:
        starts = [
            event.start_mark.index
            for event in yaml.parse(text, Loader=yaml.SafeLoader)
            if isinstance(event, yaml.DocumentStartEvent) and event.start_mark is not None
        ]
    except yaml.YAMLError:
        return None
    ends = [*starts[1:], len(text)]
    return [text[start:end] for start, end in zip(starts, ends, strict=True)]


_COMMENT_RULES: Final = ("encrypted_comment_regex", "unencrypted_comment_regex")


@dataclass(frozen=True, slots=True)
class _Group:
    """Documents sops decrypts in one run: one object, or every document of a multi-document SOPS file."""

    manifests: tuple[Manifest, ...]
    stream: bytes  # YAML, as sops reads it
    verify_mac: bool


def _mac(manifest: Manifest) -> str:
    return str(manifest.obj[SOPS_KEY].get("mac", ""))


def _plan(
    encrypted: Sequence[Manifest], sources: Mapping[str, str] | None, *, verify_mac: bool
) -> tuple[list[_Group], list[tuple[Manifest, str]]]:
    """How each encrypted object goes to sops, and those that cannot go at all.

    sops writes a multi-document file with one MAC over every document, so with
    the MAC verified the documents of one file that share a MAC go together, in
    order. Each is the document's own text when ``sources`` has its file (sops
    then reads it exactly as it did when it encrypted: comments, scalars), else
    the parsed object as a YAML flow document (keys in the same order, values of
    the same types, so the same MAC).
    """
    split: dict[str, list[str] | None] = {}
    by_mac: dict[tuple[str, str], list[Manifest]] = {}
    refused: list[tuple[Manifest, str]] = []
    for manifest in encrypted:
        key = (manifest.file, _mac(manifest)) if verify_mac else (manifest.origin, str(id(manifest)))
        by_mac.setdefault(key, []).append(manifest)
    groups = []
    for members in by_mac.values():
        file = members[0].file
        if sources is not None and file in sources and file not in split:
            split[file] = _documents(sources[file])
        documents = split.get(file)
        texts: list[str | None] = [
            documents[m.document]
            if documents is not None and m.document < len(documents) and _mac(m) in documents[m.document]
            else None
            for m in members
        ]
        if None in texts:
            comment_rules = [r for m in members for r in _COMMENT_RULES if _non_empty(m.obj[SOPS_KEY].get(r))]
            if comment_rules:
                lost = (
                    "kustomize build drops comments"
                    if not verify_mac
                    else "its text as written is not at hand"
                )
                why = (
                    f"it chooses what is encrypted by comments ({comment_rules[0]}) and {lost}; "
                    "encrypt it with encrypted_regex instead (as Flux documents)"
                )
                refused.extend((m, why) for m in members)
                continue
            texts = ["---\n" + _flow(m.obj) + "\n" for m in members]
        stream = "".join(t if t.endswith("\n") else t + "\n" for t in texts if t is not None)
        groups.append(_Group(tuple(members), stream.encode(), verify_mac))
    return groups, refused


# ---------------------------------------------------------------------------------------------------------
# Running sops


def _environment(base: Path, identities: AgeIdentities, limits: Limits) -> dict[str, str]:
    """Nothing but the key: no home, no config, no programs, no proxies, no cloud credentials."""
    return {
        # no age plugin, gpg or editor on PATH; no ~/.ssh, ~/.aws or ~/.gnupg in HOME
        **programs.bare_environment(base, limits, directories=("config",)),
        "XDG_CONFIG_HOME": str(base / "config"),  # no sops/age/keys.txt
        "GNUPGHOME": str(base / "home"),
        "SOPS_AGE_KEY": identities.environment_value(),
    }


# sops' failures, by the words its messages are known for (v3.8 to v3.13), each with our own description.
_CAUSES: Final = (
    ("MAC mismatch", "its MAC does not match: the document was changed after it was encrypted"),
    ("Cannot decrypt MAC", "its MAC does not decrypt: it (or lastmodified) was changed"),
    ("Could not decrypt MAC", "its MAC does not decrypt: it (or lastmodified) was changed"),
    ("Could not decrypt value", "a value does not decrypt: its ciphertext or its place was changed"),
    ("message authentication failed", "a value does not decrypt: its ciphertext or its place was changed"),
    ("no identity matched", "the tenant's age key does not open its data key (its enc was changed)"),
    ("Failed to get the data key", "the tenant's age key does not open its data key"),
    ("Error getting data key", "the tenant's age key does not open its data key"),
    ("sops metadata not found", "sops finds no metadata in it"),
    ("Cannot use more than one of", "its sops metadata combines encryption rules sops refuses to combine"),
    ("Error unmarshal", "sops cannot read it as an encrypted document"),
    ("Error walking tree", "sops cannot read it as an encrypted document"),
    ("Error decrypting tree", "sops cannot decrypt its values"),
)


def _cause(stderr: bytes, code: int | None) -> str:
    """A description of why sops failed, from a fixed list: never its stderr as it is.

    sops' messages quote its input: a YAML or JSON syntax error shows text, and
    "Could not decrypt value: Input string ... does not match sops' data
    format" quotes a value that was meant to be ciphertext, which after
    a change of comments or rules is the plaintext itself. So known causes are
    recognized by their wording and described in our own words, and anything
    else by its exit status alone.
    """
    text = stderr.decode(errors="replace")
    for needle, description in _CAUSES:
        if needle in text:
            return description
    return f"sops failed (exit status {code}) for a reason gitward does not recognize"


def _json_object(stdout: bytes) -> list[Any] | None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        body = dict(items)
        if len(body) != len(items):
            raise ValueError("duplicate key")
        return body

    def constant(name: str) -> Any:  # noqa: ANN401 - json's hook type
        raise ValueError(name)

    try:
        return [json.loads(stdout, object_pairs_hook=pairs, parse_constant=constant)]
    except (ValueError, RecursionError):
        return None


def _yaml_documents(stdout: bytes, limits: Limits) -> list[Any] | None:
    try:
        return [value for _, value in load_documents(stdout.decode(), file="sops", limits=limits)]
    except (Stalled, UnicodeDecodeError):  # its message may quote a decrypted value: dropped
        return None


def _still_encrypted(value: object) -> bool:
    if isinstance(value, Mapping):
        return any(_still_encrypted(v) for v in value.values())
    if isinstance(value, list):
        return any(_still_encrypted(v) for v in value)
    return isinstance(value, str) and _CIPHERTEXT.fullmatch(value) is not None


def _all_ciphertext(value: object) -> bool:
    """Whether every leaf under ``value`` is sops ciphertext (empty values, which sops leaves, count)."""
    if isinstance(value, Mapping):
        return all(_all_ciphertext(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_ciphertext(v) for v in value)
    if value is None or value == "":
        return True
    return isinstance(value, str) and _CIPHERTEXT.fullmatch(value) is not None


def _payload_was_encrypted(obj: Mapping[str, Any]) -> bool:
    """Whether every value under ``data`` and ``stringData`` was ciphertext in the commit."""
    return all(_all_ciphertext(obj.get(name)) for name in ("data", "stringData"))


def _object_problem(value: object) -> str | None:
    if not isinstance(value, Mapping):
        return "sops did not return a mapping"
    metadata = value.get("metadata")
    if not isinstance(value.get("apiVersion"), str) or not value.get("apiVersion"):
        return "the decrypted object has no apiVersion"
    if not isinstance(value.get("kind"), str) or not value.get("kind"):
        return "the decrypted object has no kind"
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        return "the decrypted object has no metadata.name"
    if _still_encrypted(value):
        return "sops left values encrypted (its encryption rules do not match the document any more)"
    return None


class _Budget:
    """The render budgets (time, bytes), shared by every sops run of one render."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.kustomize_timeout
        self.output = limits.max_rendered_bytes

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.too_slow()
        return left

    def too_slow(self) -> Stalled:
        return Stalled(
            Reason.RENDER_TOO_LARGE,
            f"decrypting the SOPS-encrypted objects took longer than {self.limits.kustomize_timeout:g}s",
        )

    def too_much(self) -> Stalled:
        return Stalled(
            Reason.RENDER_TOO_LARGE,
            f"the decrypted objects exceed the limit of {self.limits.max_rendered_bytes} rendered bytes",
        )


@dataclass(frozen=True, slots=True)
class _Sops:
    """One sops program, in one private directory with one environment."""

    executable: str
    arguments: tuple[str, ...]
    base: Path
    env: Mapping[str, str]

    def run(self, group: _Group, budget: _Budget) -> list[Manifest] | str:
        """The group's decrypted manifests, or why they cannot be; ``Stalled`` when a budget runs out."""
        timeout = budget.remaining()
        single = len(group.manifests) == 1
        argv = [
            self.executable,
            *self.arguments,
            "--config",
            str(self.base / "sops.yaml"),
            "decrypt",
            "--input-type",
            "yaml",
            # sops writes only the first document as JSON; a multi-document file comes back as YAML.
            "--output-type",
            "json" if single else "yaml",
            "--decryption-order",
            "age",
            *([] if group.verify_mac else ["--ignore-mac"]),
        ]
        result = processes.run(
            argv,
            env=self.env,
            cwd=self.base,
            stdin=group.stream,
            timeout=timeout,
            max_output=budget.output,
            limits=processes.ResourceLimits(
                address_space=budget.limits.kustomize_memory_bytes,
                cpu_seconds=max(1, int(timeout) + 1),
                file_size=0,  # sops writes no file, so it may write none
            ),
        )
        if result.timed_out or result.ended is processes.Ended.CPU_LIMIT:
            raise budget.too_slow()
        if result.over_output:
            raise budget.too_much()
        stderr = result.stderr.decode(errors="replace").lower()
        if result.code != 0 and ("out of memory" in stderr or "cannot allocate memory" in stderr):
            raise Stalled(
                Reason.RENDER_TOO_LARGE,
                f"sops needed more than {budget.limits.kustomize_memory_bytes} bytes to decrypt "
                f"{_describe(group.manifests[0])}",
            )
        if result.code != 0:
            return _cause(result.stderr, result.code)
        budget.output -= len(result.stdout)
        if budget.output < 0:
            raise budget.too_much()
        values = _json_object(result.stdout) if single else _yaml_documents(result.stdout, budget.limits)
        if values is None or len(values) != len(group.manifests):
            return "sops printed something other than the decrypted documents"
        decrypted = []
        for manifest, value in zip(group.manifests, values, strict=True):
            problem = _object_problem(value)
            if problem:
                return problem
            body = {k: v for k, v in value.items() if k != SOPS_KEY}
            decrypted.append(
                dataclasses.replace(manifest, obj=body, decrypted=_payload_was_encrypted(manifest.obj))
            )
        return decrypted


def _refusal(failures: Sequence[tuple[Manifest, str]]) -> Stalled:
    shown = "; ".join(f"{_describe(m)}: {why}" for m, why in failures[:_SHOWN_FAILURES])
    more = f"; and {len(failures) - _SHOWN_FAILURES} more" if len(failures) > _SHOWN_FAILURES else ""
    noun = "object" if len(failures) == 1 else "objects"
    return Stalled(
        Reason.DECRYPTION_FAILED, f"{len(failures)} SOPS-encrypted {noun} cannot be decrypted: {shown}{more}"
    )


def decrypt(
    manifests: Sequence[Manifest],
    identities: AgeIdentities | None,
    *,
    sops_command: Sequence[str] = DEFAULT_SOPS,
    limits: Limits | None = None,
    verify_mac: bool = True,
    sources: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """``manifests`` with every SOPS-encrypted object replaced by its decryption, in the same order.

    Objects without a ``sops`` key pass through untouched, and then sops is not
    needed at all. ``sops_command`` is the program (found on the operator's
    PATH) and any global flags to give it before gitward's own, as for
    kustomize's command. ``verify_mac`` is for plain YAML, whose documents are as
    sops wrote them; kustomize's output needs ``verify_mac=False`` (see the
    module notes). ``sources`` maps a manifest's ``file`` to the text it was
    parsed from, so sops can read a document as written (needed only for
    files whose encryption rules are comments).

    Raises ``Stalled``/``DecryptionFailed`` listing every object that cannot be
    decrypted (refused by :func:`metadata_problem` without running sops, or
    refused by sops), ``Stalled``/``RenderTooLarge`` when decryption outgrows
    the render budgets, and ``Waiting``/``ReconcileError`` when the sops
    program is missing.
    """
    limits = limits or Limits()
    encrypted = [m for m in manifests if is_encrypted(m.obj)]
    if not encrypted:
        return list(manifests)
    if identities is None:
        _no_key(encrypted)
    failures: list[tuple[Manifest, str]] = []
    allowed = []
    for manifest in encrypted:
        problem = metadata_problem(manifest.obj[SOPS_KEY], identities.recipients)
        if problem:
            failures.append((manifest, problem))
        else:
            allowed.append(manifest)
    groups, refused = _plan(allowed, sources, verify_mac=verify_mac)
    failures.extend(refused)
    decrypted: dict[int, Manifest] = {}
    if groups:
        decrypted = _decrypt_groups(groups, identities, sops_command, limits, failures)
    if failures:
        order = {id(m): i for i, m in enumerate(manifests)}
        raise _refusal(sorted(failures, key=lambda f: order[id(f[0])]))
    return [decrypted.get(id(m), m) for m in manifests]


def _decrypt_groups(
    groups: Sequence[_Group],
    identities: AgeIdentities,
    sops_command: Sequence[str],
    limits: Limits,
    failures: list[tuple[Manifest, str]],
) -> dict[int, Manifest]:
    executable = programs.executable(sops_command, tool="sops", flag="--sops")
    budget = _Budget(limits)
    decrypted: dict[int, Manifest] = {}
    with tempfile.TemporaryDirectory(prefix="gitward-sops-") as workdir:
        base = Path(workdir)
        base.chmod(0o700)
        (base / "sops.yaml").write_text("creation_rules: []\n")  # not a .sops.yaml found elsewhere
        sops = _Sops(executable, tuple(sops_command[1:]), base, _environment(base, identities, limits))
        for group in groups:
            outcome = sops.run(group, budget)
            if isinstance(outcome, str):
                failures.extend((m, outcome) for m in group.manifests)
            else:
                pairs = zip(group.manifests, outcome, strict=True)
                decrypted.update((id(original), new) for original, new in pairs)
    return decrypted


def _no_key(encrypted: Sequence[Manifest]) -> NoReturn:
    shown = ", ".join(_describe(m) for m in encrypted[:_SHOWN_FAILURES])
    more = f" and {len(encrypted) - _SHOWN_FAILURES} more" if len(encrypted) > _SHOWN_FAILURES else ""
    raise Stalled(
        Reason.DECRYPTION_FAILED,
        f"the tenant has no decryption key (GitOpsTenant spec.decryption), so its SOPS-encrypted objects "
        f"cannot be decrypted: {shown}{more}",
    )
