"""Cosign image signatures verified offline, as ``cosign verify --key K --insecure-ignore-tlog`` does.

Cosign's classic layout stores an image's signatures in its own repository, in the
manifest tagged ``sha256-<hex>.sig``: each layer of media type
``application/vnd.dev.cosign.simplesigning.v1+json`` is a simple-signing payload (JSON)
and carries the base64 signature over those exact bytes in the annotation
``dev.cosignproject.cosign/signature``. Fetching them is ``images.registry``'s job; this
module decides, purely, whether any of them is a trusted key's signature of this digest.

A signature counts only if, in this order:

1. it verifies over the payload bytes with one of the tenant's keys, the way sigstore's
   ``LoadVerifier`` checks it for ``cosign verify --key``: ECDSA (ASN.1 DER, or IEEE
   P1363 ``r||s`` which sigstore also accepts) over SHA-256 — and, for P-384 and P-521
   keys, also over SHA-384 / SHA-512, which is what ``cosign sign`` uses with such keys;
   RSA PKCS #1 v1.5 over SHA-256; pure Ed25519 (``cosign verify --key`` does not take
   Ed25519ph, and neither do we). RSA-PSS is not tried: cosign uses it only when told to.
2. its payload says ``critical.type`` is ``cosign container image signature`` (cosign's
   own claim check skips this; a signed payload of another type is not an image
   signature, so gitward refuses it);
3. its ``critical.image.docker-manifest-digest`` is the image's digest.

The payload's field names are matched exactly and a payload with a duplicate key is
refused, so no two JSON readers can disagree on what was signed (Go's encoding/json,
which cosign uses, would also accept ``"Critical"``; cosign never writes it).

``critical.identity.docker-reference`` (the repository the signer pushed to) is returned
for the record but not required to match, as in ``cosign verify``: the signature binds the
content by digest, the tenant's repository globs already decide where images may come
from, and images are routinely copied between registries and mirrors with their
signatures (``cosign copy``), which a reference check would refuse. Docker Hub names are
also spelled several ways (``index.docker.io/library/x``, ``docker.io/x``), so a literal
comparison would be brittle without adding safety.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gitward.images.keys import TrustedImageKeys, TrustedKey

SIMPLE_SIGNING_MEDIA_TYPE: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION: Final = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE: Final = "cosign container image signature"
_P1363_MAX_BYTES: Final = 132  # sigstore refuses longer raw r||s signatures (P-521: 2 x 66)


def signature_tag(digest: str) -> str:
    """The tag of an image's signature manifest: ``sha256:abc`` → ``sha256-abc.sig``."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}.sig"


@dataclass(frozen=True, slots=True)
class SignedPayload:
    """One signature layer as fetched: the payload blob and the base64 signature annotated on it."""

    payload: bytes
    signature: str
    layer_digest: str = ""


class SignatureOutcome(enum.StrEnum):
    """Why an image is, or is not, signed for the tenant."""

    VERIFIED = "verified"
    NO_SIGNATURE = "no signature"
    UNTRUSTED = "signed only by keys the tenant does not trust"
    OTHER_DIGEST = "signature does not cover this digest"
    NOT_IMAGE_SIGNATURE = "signed payload is not a cosign container image signature"


@dataclass(frozen=True, slots=True)
class SignatureVerdict:
    """The result of checking an image's signatures against the tenant's keys."""

    outcome: SignatureOutcome
    key_fingerprint: str | None = None  # the key that verified, when one did
    claimed_reference: str | None = None  # critical.identity.docker-reference of that payload
    detail: str = ""

    @property
    def verified(self) -> bool:
        """Whether a trusted key signed this digest."""
        return self.outcome is SignatureOutcome.VERIFIED

    def __str__(self) -> str:
        return f"{self.outcome}{f' ({self.detail})' if self.detail else ''}"


def _ecdsa_hashes(key: ec.EllipticCurvePublicKey) -> tuple[hashes.HashAlgorithm, ...]:
    if isinstance(key.curve, ec.SECP384R1):
        return (hashes.SHA256(), hashes.SHA384())
    if isinstance(key.curve, ec.SECP521R1):
        return (hashes.SHA256(), hashes.SHA512())
    return (hashes.SHA256(),)


def _ecdsa_encodings(signature: bytes) -> list[bytes]:
    """The signature as DER, and as DER from IEEE P1363 ``r||s`` when it has that shape (as sigstore)."""
    encodings = [signature]
    if signature and len(signature) <= _P1363_MAX_BYTES and len(signature) % 2 == 0:
        half = len(signature) // 2
        r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        if r and s:
            encodings.append(encode_dss_signature(r, s))
    return encodings


def signature_verifies(key: TrustedKey, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature over ``payload`` (see the module's rules)."""
    public_key = key.public_key
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, payload)
            return True
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError):
        return False
    for algorithm in _ecdsa_hashes(public_key):
        for encoded in _ecdsa_encodings(signature):
            try:
                public_key.verify(encoded, payload, ec.ECDSA(algorithm))
            except (InvalidSignature, ValueError):
                continue
            return True
    return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in the signed payload")
    return dict(pairs)


def _claims(payload: bytes) -> tuple[str, str, str] | None:
    """``(type, docker-manifest-digest, docker-reference)`` of a simple-signing payload, or None if malformed.

    Duplicate keys are refused so no two JSON readers can disagree on what was signed.
    """
    try:
        document = json.loads(payload, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError):
        return None
    critical = document.get("critical") if isinstance(document, Mapping) else None
    if not isinstance(critical, Mapping):
        return None
    image, identity = critical.get("image"), critical.get("identity")
    kind = critical.get("type")
    digest = image.get("docker-manifest-digest") if isinstance(image, Mapping) else None
    reference = identity.get("docker-reference") if isinstance(identity, Mapping) else None
    if not isinstance(kind, str) or not isinstance(digest, str):
        return None
    return kind, digest, reference if isinstance(reference, str) else ""


def _decode_signature(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_signatures(
    signatures: Sequence[SignedPayload], *, digest: str, keys: TrustedImageKeys
) -> SignatureVerdict:
    """Whether one of ``signatures`` is a trusted key's cosign signature of the image ``digest``.

    The first signature that passes every check wins. Otherwise the verdict explains the
    closest miss: a trusted key's signature of something else beats an untrusted one.
    """
    if not signatures:
        return SignatureVerdict(SignatureOutcome.NO_SIGNATURE)
    closest = SignatureVerdict(
        SignatureOutcome.UNTRUSTED, detail=f"{len(signatures)} signature(s), none by the tenant's keys"
    )
    for signed in signatures:
        raw = _decode_signature(signed.signature)
        if raw is None:
            continue
        key = next((k for k in keys.keys if signature_verifies(k, raw, signed.payload)), None)
        if key is None:
            continue
        claims = _claims(signed.payload)
        if claims is None or claims[0] != COSIGN_SIGNATURE_TYPE:
            if closest.outcome is SignatureOutcome.UNTRUSTED:
                shown = repr(claims[0][:100]) if claims else "unreadable"
                closest = SignatureVerdict(
                    SignatureOutcome.NOT_IMAGE_SIGNATURE, detail=f"type {shown}, signed by {key.fingerprint}"
                )
            continue
        if claims[1] != digest:
            closest = SignatureVerdict(
                SignatureOutcome.OTHER_DIGEST,
                detail=f"{key.fingerprint} signed {claims[1][:80]!r}, not {digest}",
            )
            continue
        return SignatureVerdict(SignatureOutcome.VERIFIED, key.fingerprint, claims[2] or None)
    return closest
