"""Cosign's classic image signatures verified offline, made here in exactly cosign's format.

A payload is the simple-signing JSON cosign writes (``json.Marshal`` of its struct, so
this key order and ``"optional":null``), the signature cosign's ECDSA P-256 SHA-256 in
ASN.1 DER, base64 in the layer's annotation. The real cosign's signatures are checked
against this verifier in tests/integration/test_registry_client.py.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gitward.images.cosign import (
    SignatureOutcome,
    SignedPayload,
    signature_tag,
    verify_signatures,
)
from gitward.images.keys import TrustedImageKeys, fingerprint

DIGEST = "sha256:" + hashlib.sha256(b"an image manifest").hexdigest()
OTHER_DIGEST = "sha256:" + hashlib.sha256(b"another image manifest").hexdigest()


def cosign_payload(
    digest: str = DIGEST,
    *,
    reference: str = "ghcr.io/acme/web",
    kind: str = "cosign container image signature",
) -> bytes:
    """What cosign signs: Go's json.Marshal of payload.SimpleContainerImage (no spaces, struct order)."""
    return (
        f'{{"critical":{{"identity":{{"docker-reference":"{reference}"}},'
        f'"image":{{"docker-manifest-digest":"{digest}"}},"type":"{kind}"}},"optional":null}}'
    ).encode()


def pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key, payload: bytes, algorithm=None) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(payload, ec.ECDSA(algorithm or hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(payload, padding.PKCS1v15(), algorithm or hashes.SHA256())
    else:
        raw = key.sign(payload)
    return base64.b64encode(raw).decode()


def trusted(*keys) -> TrustedImageKeys:
    found = TrustedImageKeys.from_config_maps(
        [{f"key{i}.pub": pem(k) for i, k in enumerate(keys)}], names=["cosign-keys"]
    )
    assert not found.problems
    return found


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def stranger():
    return ec.generate_private_key(ec.SECP256R1())


def test_a_signature_by_a_trusted_key_over_this_digest_verifies(key):
    payload = cosign_payload()
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.verified
    assert verdict.outcome is SignatureOutcome.VERIFIED
    assert verdict.key_fingerprint == fingerprint(key.public_key())
    assert verdict.claimed_reference == "ghcr.io/acme/web"


def test_the_fingerprint_is_the_sha256_of_the_der_subject_public_key_info(key):
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fingerprint(key.public_key()) == "sha256:" + hashlib.sha256(der).hexdigest()
    assert trusted(key).fingerprints == {fingerprint(key.public_key())}


def test_a_signature_by_another_key_does_not_count(key, stranger):
    payload = cosign_payload()
    verdict = verify_signatures(
        [SignedPayload(payload, sign(stranger, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert not verdict.verified
    assert verdict.outcome is SignatureOutcome.UNTRUSTED
    assert str(verdict).startswith("signed only by keys the tenant does not trust")


def test_a_trusted_signature_of_another_digest_does_not_cover_this_one(key):
    payload = cosign_payload(OTHER_DIGEST)
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.outcome is SignatureOutcome.OTHER_DIGEST
    assert str(verdict).startswith("signature does not cover this digest")
    assert OTHER_DIGEST in verdict.detail


def test_a_tampered_payload_does_not_verify(key):
    payload = cosign_payload(OTHER_DIGEST)
    tampered = payload.replace(OTHER_DIGEST.encode(), DIGEST.encode())  # now names our digest, unsigned
    verdict = verify_signatures(
        [SignedPayload(tampered, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.outcome is SignatureOutcome.UNTRUSTED


def test_a_trusted_signature_of_another_payload_type_does_not_count(key):
    payload = cosign_payload(kind="atomic container signature")
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.outcome is SignatureOutcome.NOT_IMAGE_SIGNATURE
    assert "atomic container signature" in verdict.detail


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"critical":"x"}',
        b'{"critical":{"image":{"docker-manifest-digest":1},"type":"cosign container image signature"}}',
        # two readers could disagree on which digest was signed: refused
        (
            f'{{"critical":{{"identity":{{"docker-reference":"x"}},"image":{{"docker-manifest-digest":"{OTHER_DIGEST}",'
            f'"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}}}}'
        ).encode(),
        b'{"Critical":{"image":{"docker-manifest-digest":"'
        + DIGEST.encode()
        + b'"},"type":"cosign container image signature"}}',
    ],
)
def test_a_signed_but_malformed_payload_does_not_count(key, payload):
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.outcome is SignatureOutcome.NOT_IMAGE_SIGNATURE


def test_the_digest_must_match_exactly(key):
    payload = cosign_payload(DIGEST.upper().replace("SHA256", "sha256"))
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.outcome is SignatureOutcome.OTHER_DIGEST


def test_no_signature_at_all(key):
    verdict = verify_signatures([], digest=DIGEST, keys=trusted(key))
    assert verdict.outcome is SignatureOutcome.NO_SIGNATURE
    assert str(verdict) == "no signature"


def test_one_good_signature_among_bad_ones_is_enough(key, stranger):
    payload = cosign_payload()
    signatures = [
        SignedPayload(payload, "!!not base64!!"),
        SignedPayload(payload, sign(stranger, payload)),
        SignedPayload(cosign_payload(OTHER_DIGEST), sign(key, cosign_payload(OTHER_DIGEST))),
        SignedPayload(payload, sign(key, payload)),
    ]
    verdict = verify_signatures(signatures, digest=DIGEST, keys=trusted(key))
    assert verdict.verified
    assert verdict.key_fingerprint == fingerprint(key.public_key())


def test_the_closest_miss_is_reported(key, stranger):
    """A trusted key's signature of something else explains more than a stranger's signature."""
    other = cosign_payload(OTHER_DIGEST)
    signatures = [
        SignedPayload(cosign_payload(), sign(stranger, cosign_payload())),
        SignedPayload(other, sign(key, other)),
    ]
    assert (
        verify_signatures(signatures, digest=DIGEST, keys=trusted(key)).outcome
        is SignatureOutcome.OTHER_DIGEST
    )


def test_a_signature_in_ieee_p1363_form_verifies_as_sigstore_accepts_it(key):
    payload = cosign_payload()
    r, s = decode_dss_signature(base64.b64decode(sign(key, payload)))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    signature = base64.b64encode(raw).decode()
    assert verify_signatures([SignedPayload(payload, signature)], digest=DIGEST, keys=trusted(key)).verified


@pytest.mark.parametrize(
    ("curve", "algorithm", "verifies"),
    [
        (ec.SECP256R1(), hashes.SHA256(), True),
        (ec.SECP256R1(), hashes.SHA384(), False),  # cosign would not verify it either
        (ec.SECP384R1(), hashes.SHA256(), True),  # cosign verify --key's default hash
        (ec.SECP384R1(), hashes.SHA384(), True),  # what cosign sign uses with a P-384 key
        (ec.SECP521R1(), hashes.SHA256(), True),
        (ec.SECP521R1(), hashes.SHA512(), True),
        (ec.SECP521R1(), hashes.SHA384(), False),
    ],
)
def test_ecdsa_keys_and_their_hashes(curve, algorithm, verifies):
    key = ec.generate_private_key(curve)
    payload = cosign_payload()
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload, algorithm))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.verified is verifies


def test_rsa_keys_verify_pkcs1v15_sha256_only():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    payload = cosign_payload()
    keys = trusted(key)
    assert verify_signatures([SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=keys).verified
    pss = base64.b64encode(
        key.sign(payload, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256())
    ).decode()
    assert not verify_signatures([SignedPayload(payload, pss)], digest=DIGEST, keys=keys).verified
    sha512 = sign(key, payload, hashes.SHA512())
    assert not verify_signatures([SignedPayload(payload, sha512)], digest=DIGEST, keys=keys).verified


def test_ed25519_keys_verify_pure_ed25519():
    key = ed25519.Ed25519PrivateKey.generate()
    payload = cosign_payload()
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=trusted(key)
    )
    assert verdict.verified


def test_a_signature_for_one_key_type_does_not_confuse_another(key):
    """An Ed25519 signature checked against ECDSA and RSA keys, and back: no crash, no match."""
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    payload = cosign_payload()
    for signer in (ed, rs, key):
        others = [k for k in (ed, rs, key) if k is not signer]
        verdict = verify_signatures(
            [SignedPayload(payload, sign(signer, payload))], digest=DIGEST, keys=trusted(*others)
        )
        assert verdict.outcome is SignatureOutcome.UNTRUSTED


def test_no_trusted_keys_means_nothing_verifies(key):
    payload = cosign_payload()
    verdict = verify_signatures(
        [SignedPayload(payload, sign(key, payload))], digest=DIGEST, keys=TrustedImageKeys()
    )
    assert verdict.outcome is SignatureOutcome.UNTRUSTED


def test_the_signature_tag_is_cosigns():
    assert signature_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32 + ".sig"


# ------------------------------------------------------------------------------------------ trusted keys


def test_every_pem_public_key_of_every_config_map_is_trusted(key, stranger):
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pkcs1 = (
        rs.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    )
    keys = TrustedImageKeys.from_config_maps(
        [
            {"cosign.pub": pem(key), "both.pub": pem(stranger) + "\n" + pem(ed)},
            {"rsa": pkcs1, "again.pub": pem(key)},
        ],
        names=["team-keys", "more-keys"],
    )
    assert keys.problems == ()
    assert [k.algorithm for k in keys.keys] == ["ecdsa-p256", "ed25519", "ecdsa-p256", "rsa-3072"]
    assert keys.fingerprints == {fingerprint(k.public_key()) for k in (key, stranger, ed, rs)}  # each once
    assert keys.keys[0].source == "ConfigMap team-keys key 'both.pub'"


def test_values_that_are_not_public_keys_are_named_not_raised(key):
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused, the point
    p224 = ec.generate_private_key(ec.SECP224R1())
    dsa_key = dsa.generate_private_key(key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    broken = pem(key).replace("A", "B", 5)
    keys = TrustedImageKeys.from_config_maps(
        [
            {
                "good.pub": pem(key),
                "readme": "put cosign.pub here",
                "private.key": private,
                "cert.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                "small.pub": pem(small_rsa),
                "p224.pub": pem(p224),
                "dsa.pub": pem(dsa_key),
                "broken.pub": broken,
            }
        ],
        names=["cosign-keys"],
    )
    assert [k.source for k in keys.keys] == ["ConfigMap cosign-keys key 'good.pub'"]
    problems = "\n".join(keys.problems)
    assert "ConfigMap cosign-keys key 'readme': not a PEM public key" in problems
    assert "key 'private.key': holds a private key" in problems
    assert "key 'cert.pem': a CERTIFICATE block is not a public key" in problems
    assert "key 'small.pub': a 1024-bit RSA key is too short" in problems
    assert "key 'p224.pub': ECDSA curve secp224r1 is not supported" in problems
    assert "key 'dsa.pub': DSAPublicKey keys are not supported" in problems
    assert "key 'broken.pub': the PEM block is not a readable public key" in problems
    assert "MII" not in problems  # no key material is echoed back
    assert len(keys.problems) == 7


def test_config_maps_are_named_by_position_without_names():
    keys = TrustedImageKeys.from_config_maps([{}, {"x": "nope"}])
    assert keys.problems == ("ConfigMap keysFrom[1] key 'x': not a PEM public key",)
    assert keys.empty


def test_a_trusted_key_repr_shows_no_key_material(key):
    [trusted_key] = trusted(key).keys
    assert "public_key" not in repr(trusted_key)
