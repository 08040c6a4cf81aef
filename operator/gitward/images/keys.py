"""The cosign public keys a tenant trusts for images, read from its ``images.verify.keysFrom`` ConfigMaps.

Every value of each ConfigMap is expected to hold one or more PEM public keys (what
``cosign generate-key-pair`` writes to ``cosign.pub``). A value that holds none, or a key
cosign's ``--key`` verification would not accept, becomes a problem naming the ConfigMap
key, never an exception: the keys that did parse are still usable, and the caller decides
whether a problem stops the tenant. Each key is named by a fingerprint, the sha256 of
its DER SubjectPublicKeyInfo, which is what the revision records as the verifier.
Pure: parsing only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# cosign's --key verification loads the same kinds (sigstore's LoadVerifier): ECDSA on the NIST
# curves, RSA (PKCS #1 v1.5) and Ed25519. RSA keys under 2048 bits are refused here, as sigstore's
# own key validation does when it generates or imports keys.
SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_PUBLIC_KEY_TYPES = frozenset({b"PUBLIC KEY", b"RSA PUBLIC KEY"})

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One public key a tenant trusts, with where it came from."""

    fingerprint: str  # sha256:<hex> of the DER SubjectPublicKeyInfo
    source: str  # ConfigMap name and key, for messages
    public_key: PublicKey = field(repr=False, compare=False)

    @property
    def algorithm(self) -> str:
        """``ecdsa-p256``, ``rsa-3072``, ``ed25519``: for messages and records."""
        key = self.public_key
        if isinstance(key, ec.EllipticCurvePublicKey):
            return f"ecdsa-p{key.curve.key_size}"
        if isinstance(key, rsa.RSAPublicKey):
            return f"rsa-{key.key_size}"
        return "ed25519"


def fingerprint(public_key: PublicKey) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _supported(public_key: object) -> PublicKey | str:
    """The key if cosign's ``--key`` verification would use it, else why not."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, SUPPORTED_CURVES):
            return f"ECDSA curve {public_key.curve.name} is not supported (P-256, P-384 or P-521)"
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            return f"a {public_key.key_size}-bit RSA key is too short (at least {MIN_RSA_BITS} bits)"
        return public_key
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key
    return f"{type(public_key).__name__.lstrip('_')} keys are not supported (ECDSA, RSA or Ed25519)"


def _parse_value(value: str, source: str) -> tuple[list[TrustedKey], list[str]]:
    raw = value.encode()
    blocks = list(_PEM_BLOCK.finditer(raw))
    if not blocks:
        return [], [f"{source}: not a PEM public key"]
    keys: list[TrustedKey] = []
    problems: list[str] = []
    for number, block in enumerate(blocks, start=1):
        where = source if len(blocks) == 1 else f"{source} (PEM block {number})"
        kind = block.group(1)
        if b"PRIVATE KEY" in kind:
            problems.append(f"{where}: holds a private key; a ConfigMap takes only public keys")
            continue
        if kind not in _PUBLIC_KEY_TYPES:
            problems.append(f"{where}: a {kind.decode()} block is not a public key")
            continue
        try:
            public_key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            problems.append(f"{where}: the PEM block is not a readable public key")
            continue
        supported = _supported(public_key)
        if isinstance(supported, str):
            problems.append(f"{where}: {supported}")
            continue
        keys.append(TrustedKey(fingerprint(supported), source, supported))
    return keys, problems


@dataclass(frozen=True, slots=True)
class TrustedImageKeys:
    """The image signing keys a tenant trusts, and what could not be read as one."""

    keys: tuple[TrustedKey, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints of every trusted key (part of a verification's cache key)."""
        return frozenset(key.fingerprint for key in self.keys)

    @property
    def empty(self) -> bool:
        """No usable key: no image can be verified."""
        return not self.keys

    @classmethod
    def from_config_maps(
        cls, config_maps: Iterable[Mapping[str, object]], *, names: Sequence[str] = ()
    ) -> TrustedImageKeys:
        """Read every value of every ConfigMap's ``data`` as PEM public keys, in order.

        ``names`` (the ConfigMaps' names, in the same order) only makes messages clearer;
        without them a ConfigMap is named by its position in ``keysFrom``.
        """
        keys: dict[str, TrustedKey] = {}
        problems: list[str] = []
        for index, data in enumerate(config_maps):
            config_map = names[index] if index < len(names) else f"keysFrom[{index}]"
            for name in sorted(data):
                value = data[name]
                source = f"ConfigMap {config_map} key {name!r}"
                if not isinstance(value, str):
                    problems.append(f"{source}: not a PEM public key")
                    continue
                found, wrong = _parse_value(value, source)
                problems.extend(wrong)
                for key in found:
                    keys.setdefault(key.fingerprint, key)
        return cls(tuple(keys.values()), tuple(problems))
