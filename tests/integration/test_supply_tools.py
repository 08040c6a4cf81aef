"""The real supply-chain tools the other tests lean on: the Distribution registry, cosign v2, sops and age.

These prove the test support works before anything is built on it: the
registry really asks for credentials and stores what is pushed by digest;
cosign signs offline into the classic ``.sig`` tag and its verify tells the
right key from another; sops encrypts only a Secret's values to an age
recipient and decrypts only with the matching identity. Every binary is the
one ``hack/cluster build`` compiled at the pinned version: a missing one fails
these tests, it never skips them. Each registry is stopped by its context
manager, also when a test fails. No control plane is needed.
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
import yaml

from support.registry import (
    OCI_MANIFEST,
    Registry,
    cosign_keypair,
    cosign_sign,
    cosign_verify,
    push_image,
    sha256_digest,
)
from support.sops import ToolError, age_keypair, sops_decrypt, sops_encrypt
from support.toolpaths import (
    age_binary,
    age_keygen_binary,
    cosign_binary,
    registry_binary,
    sops_binary,
    tool_version,
)

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: db-credentials
  namespace: team-a
type: Opaque
stringData:
  password: plain-hunter2-value
data:
  token: c2VjcmV0LXRva2VuLXZhbHVl
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def signed_image(registry, tmp_path_factory):
    """An image pushed and signed with one cosign key pair; returns (reference, key pair directory)."""
    keys = tmp_path_factory.mktemp("cosign-keys")
    private, public = cosign_keypair(keys, password="k3y-pass")
    digest = push_image(registry, "team-a/web", "v1")
    reference = registry.reference("team-a/web", digest)
    cosign_sign(registry, reference, private, password="k3y-pass")
    return reference, digest, public


def test_every_tool_is_the_built_one_at_its_pinned_version():
    """The support functions find the binaries hack/cluster built, and each says its pinned version."""

    def version(*argv: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return result.stdout + result.stderr

    assert f"sops {tool_version('sops').lstrip('v')}" in version(
        sops_binary(), "--disable-version-check", "--version"
    )
    assert version(age_keygen_binary(), "--version").strip() == tool_version("age-keygen")
    assert version(age_binary(), "--version").strip() == tool_version("age")
    assert tool_version("registry") in version(registry_binary(), "--version")
    assert tool_version("cosign").startswith("v2.")  # v2 writes the classic .sig layout by default
    assert f"GitVersion:    {tool_version('cosign')}" in version(cosign_binary(), "version")


def test_registry_refuses_requests_without_the_right_credentials(registry):
    """The htpasswd realm guards the API: no credentials, or a wrong password, is 401 with a Basic challenge."""
    status, headers, _ = registry.request("GET", "/v2/", auth=False)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    wrong = "Basic " + base64.b64encode(f"{registry.username}:wrong".encode()).decode()
    status, _, _ = registry.request("GET", "/v2/", auth=False, headers={"Authorization": wrong})
    assert status == 401
    status, _, _ = registry.request("GET", "/v2/", auth=True)
    assert status == 200


def test_a_pushed_image_is_retrievable_by_its_digest(registry):
    """The manifest comes back byte for byte by digest and by tag; each push of new content is a new digest."""
    digest = push_image(registry, "team-a/api", "v1")
    body, content_type = registry.manifest("team-a/api", digest)
    assert content_type == OCI_MANIFEST
    assert sha256_digest(body) == digest
    assert registry.manifest("team-a/api", "v1")[0] == body
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert len(manifest["layers"]) == 1
    status, _, blob = registry.request("GET", f"/v2/team-a/api/blobs/{manifest['layers'][0]['digest']}")
    assert status == 200
    assert sha256_digest(blob) == manifest["layers"][0]["digest"]
    assert push_image(registry, "team-a/api", "v1") != digest  # a random nonce each time
    same = push_image(registry, "team-a/other", "x", content=b"fixed")
    assert push_image(registry, "team-a/api", "y", content=b"fixed") == same
    status, _, _ = registry.request("GET", f"/v2/team-a/api/manifests/{digest}", auth=False)
    assert status == 401


def test_cosign_signs_offline_in_the_classic_layout(registry, signed_image):
    """cosign v2 wrote tag sha256-<hex>.sig: a simple-signing payload layer with its signature annotation."""
    reference, digest, _ = signed_image
    body, _ = registry.manifest("team-a/web", digest.replace(":", "-") + ".sig")
    signature_manifest = json.loads(body)
    (layer,) = signature_manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert layer["annotations"]["dev.cosignproject.cosign/signature"]
    status, _, payload = registry.request("GET", f"/v2/team-a/web/blobs/{layer['digest']}")
    assert status == 200
    claim = json.loads(payload)
    assert claim["critical"]["image"]["docker-manifest-digest"] == digest
    assert claim["critical"]["identity"]["docker-reference"] == reference.split("@", 1)[0]


def test_cosign_verify_accepts_the_signing_key_and_refuses_another(registry, signed_image, tmp_path):
    """The oracle: True with the public key that signed, False with another key pair's."""
    reference, _, public = signed_image
    assert cosign_verify(registry, reference, public) is True
    _, other_public = cosign_keypair(tmp_path / "other")
    assert cosign_verify(registry, reference, other_public) is False


def test_cosign_verify_says_false_for_an_unsigned_image(registry, tmp_path):
    """An image with no .sig tag is not verified (and is not an error of the oracle)."""
    _, public = cosign_keypair(tmp_path / "keys")
    digest = push_image(registry, "team-a/unsigned", "v1")
    assert cosign_verify(registry, registry.reference("team-a/unsigned", digest), public) is False


def test_sops_encrypts_only_the_values_to_the_age_recipient():
    """Flux's way: data/stringData become ENC[...], metadata stays readable, sops metadata names the recipient."""
    _, recipient = age_keypair()
    encrypted = sops_encrypt(SECRET, recipient)
    assert "plain-hunter2-value" not in encrypted
    assert "c2VjcmV0LXRva2VuLXZhbHVl" not in encrypted
    document = yaml.safe_load(encrypted)
    assert document["metadata"] == {"name": "db-credentials", "namespace": "team-a"}
    assert document["stringData"]["password"].startswith("ENC[AES256_GCM,")
    assert document["data"]["token"].startswith("ENC[AES256_GCM,")
    metadata = document["sops"]
    assert [entry["recipient"] for entry in metadata["age"]] == [recipient]
    assert metadata["encrypted_regex"] == "^(data|stringData)$"
    assert metadata["mac"].startswith("ENC[")


def test_sops_decrypts_with_the_right_identity_only():
    """The matching identity gives every value back; another identity fails loudly."""
    identity, recipient = age_keypair()
    other_identity, other_recipient = age_keypair()
    assert identity.startswith("AGE-SECRET-KEY-1")
    assert recipient.startswith("age1")
    assert other_recipient != recipient
    encrypted = sops_encrypt(SECRET, recipient)
    decrypted = yaml.safe_load(sops_decrypt(encrypted, identity))
    assert decrypted == yaml.safe_load(SECRET)
    with pytest.raises(ToolError) as error:
        sops_decrypt(encrypted, other_identity)
    assert "Failed to get the data key" in error.value.stderr


def test_sops_encrypts_to_several_recipients_each_of_which_decrypts():
    """A file for two recipients (a team key and a cluster key, say) opens with either identity."""
    first, second = age_keypair(), age_keypair()
    encrypted = sops_encrypt(SECRET, [first[1], second[1]])
    assert {entry["recipient"] for entry in yaml.safe_load(encrypted)["sops"]["age"]} == {first[1], second[1]}
    for identity, _ in (first, second):
        assert yaml.safe_load(sops_decrypt(encrypted, identity)) == yaml.safe_load(SECRET)
